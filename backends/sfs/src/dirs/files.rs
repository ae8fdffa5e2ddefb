//! Small regular files over NFSv3 (the volume marks of [`crate::marks`]): written whole with
//! FILE_SYNC, optionally only if new, and read back with a size bound.

use everest_backend::{Error, Result};
use nfs3_client::nfs3_types::nfs3::{
    self as nfs3, CREATE3args, Nfs3Option, Nfs3Result, READ3args, WRITE3args, createhow3,
    diropargs3, ftype3, nfs_fh3, nfsstat3, sattr3, stable_how,
};
use nfs3_client::nfs3_types::xdr_codec::Opaque;

use super::{
    Conn, DirFile, MAX_FILE, MAX_FILES, Nfs3Directories, list, lookup, name, nfs_error, rpc_error,
};

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
        read_all(conn, &fh, &path.join("/")).await.map(Some)
    }

    /// Every regular file directly in `dir` (at most [`MAX_FILES`]), with its content and
    /// modification time; none when `dir` does not exist.
    pub(super) async fn read_files_on(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        dir: &[&str],
    ) -> Result<Vec<DirFile>> {
        let last = dir.last().copied().unwrap_or_default();
        let Some(parent) = self.parent(conn, base, dir).await? else {
            return Ok(Vec::new());
        };
        let fh = match lookup(conn, &parent, last).await? {
            Some((fh, ftype3::NF3DIR)) => fh,
            _ => return Ok(Vec::new()),
        };
        let names = list(conn, &fh).await?;
        if names.len() > MAX_FILES {
            return Err(Error::FailedPrecondition(format!(
                "{} on the NFS server holds {} entries, more than the {MAX_FILES} read at once",
                dir.join("/"),
                names.len()
            )));
        }
        let mut files = Vec::new();
        for entry in names {
            let res = conn
                .lookup(&nfs3::LOOKUP3args {
                    what: diropargs3 {
                        dir: fh.clone(),
                        name: name(&entry),
                    },
                })
                .await
                .map_err(|e| rpc_error("LOOKUP", e))?;
            let (file, attrs) = match res {
                Nfs3Result::Ok(ok) => (ok.object, ok.obj_attributes),
                // Removed since the listing: nothing to read.
                Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => continue,
                Nfs3Result::Err((status, _)) => return Err(nfs_error("LOOKUP", status)),
            };
            let modified = match attrs {
                Nfs3Option::Some(a) if a.type_ == ftype3::NF3REG => Some(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::new(a.mtime.seconds.into(), a.mtime.nseconds),
                ),
                // Not a regular file: not a mark.
                Nfs3Option::Some(_) => continue,
                Nfs3Option::None => None,
            };
            let what = format!("{}/{entry}", dir.join("/"));
            let content = read_all(conn, &file, &what).await?;
            files.push(DirFile {
                name: entry,
                content,
                modified,
            });
        }
        Ok(files)
    }
}

/// The whole content of the regular file `fh`, at most [`MAX_FILE`] bytes.
async fn read_all(conn: &mut Conn, fh: &nfs_fh3, what: &str) -> Result<Vec<u8>> {
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
            return Ok(data);
        }
        if data.len() >= MAX_FILE as usize {
            return Err(Error::FailedPrecondition(format!(
                "{what} on the NFS server is over {MAX_FILE} bytes"
            )));
        }
    }
}
