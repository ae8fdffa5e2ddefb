//! Small regular files over NFSv3 (the volume marks of [`crate::marks`]): written whole with
//! FILE_SYNC, optionally only if new, and read back with a size bound.

use everest_backend::{Error, Result};
use nfs3_client::nfs3_types::nfs3::{
    CREATE3args, Nfs3Option, Nfs3Result, READ3args, WRITE3args, createhow3, diropargs3, ftype3,
    nfs_fh3, nfsstat3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::{Conn, MAX_FILE, Nfs3Directories, lookup, name, nfs_error, rpc_error};

impl Nfs3Directories {
    pub(super) async fn write_file_on(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
        content: &[u8],
        exclusive: bool,
    ) -> Result<bool> {
        let last = path.last().copied().unwrap_or_default();
        let parent = self.existing_parent(conn, base, path).await?;
        // UNCHECKED with size 0: made if missing, emptied if there, in one call. GUARDED: made
        // only if missing.
        let attrs = sattr3 {
            mode: Nfs3Option::Some(0o600),
            size: Nfs3Option::Some(0),
            ..sattr3::default()
        };
        let res = conn
            .create(&CREATE3args {
                where_: diropargs3 {
                    dir: parent.clone(),
                    name: name(last),
                },
                how: if exclusive {
                    createhow3::GUARDED(attrs)
                } else {
                    createhow3::UNCHECKED(attrs)
                },
            })
            .await
            .map_err(|e| rpc_error("CREATE", e))?;
        let fh = match res {
            Nfs3Result::Ok(ok) => match ok.obj {
                Nfs3Option::Some(fh) => fh,
                // The server may leave the handle out; ask for it.
                Nfs3Option::None => match lookup(conn, &parent, last).await? {
                    Some((fh, _)) => fh,
                    None => return Err(nfs_error("CREATE", nfsstat3::NFS3ERR_NOENT)),
                },
            },
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) if exclusive => return Ok(false),
            Nfs3Result::Err((status, _)) => return Err(nfs_error("CREATE", status)),
        };
        // FILE_SYNC: on the server's disk before the call answers, so a mark is never lost
        // to a server crash after CreateVolume succeeded.
        let res = conn
            .write(&WRITE3args {
                file: fh,
                offset: 0,
                count: u32::try_from(content.len()).unwrap_or(u32::MAX),
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(content),
            })
            .await
            .map_err(|e| rpc_error("WRITE", e))?;
        match res {
            Nfs3Result::Ok(ok) if ok.count as usize == content.len() => Ok(true),
            Nfs3Result::Ok(ok) => Err(Error::Unavailable(format!(
                "NFS WRITE of {} wrote {} of {} bytes",
                path.join("/"),
                ok.count,
                content.len()
            ))),
            Nfs3Result::Err((status, _)) => Err(nfs_error("WRITE", status)),
        }
    }

    pub(super) async fn read_file_on(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
    ) -> Result<Option<Vec<u8>>> {
        let last = path.last().copied().unwrap_or_default();
        let Some(parent) = self.parent(conn, base, path).await? else {
            return Ok(None);
        };
        let fh = match lookup(conn, &parent, last).await? {
            None => return Ok(None),
            Some((fh, ftype3::NF3REG)) => fh,
            Some(_) => {
                return Err(Error::FailedPrecondition(format!(
                    "{} on the NFS server is not a regular file",
                    path.join("/")
                )));
            }
        };
        let mut data = Vec::new();
        loop {
            let res = conn
                .read(&READ3args {
                    file: fh.clone(),
                    offset: data.len() as u64,
                    count: MAX_FILE - data.len() as u32,
                })
                .await
                .map_err(|e| rpc_error("READ", e))?;
            let ok = match res {
                Nfs3Result::Ok(ok) => ok,
                Nfs3Result::Err((status, _)) => return Err(nfs_error("READ", status)),
            };
            data.extend_from_slice(&ok.data.0);
            if ok.eof || ok.count == 0 {
                return Ok(Some(data));
            }
            if data.len() >= MAX_FILE as usize {
                return Err(Error::FailedPrecondition(format!(
                    "{} on the NFS server is over {MAX_FILE} bytes",
                    path.join("/")
                )));
            }
        }
    }
}
