//! Directories on the NFS server, made and removed by the controller over NFSv3 from user space:
//! no kernel mount, so the controller needs no privilege and touches no host.

use std::fmt::Debug;

use async_trait::async_trait;
use everest_backend::outside::outside;
use everest_backend::{Error, Result};
use nfs3_client::nfs3_types::nfs3::{
    self, MKDIR3args, Nfs3Option, Nfs3Result, READDIR3args, REMOVE3args, RENAME3args, RMDIR3args,
    diropargs3, filename3, ftype3, nfs_fh3, nfsstat3, sattr3,
};
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::tokio::TokioConnector;
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};

mod files;

/// Who owns a new directory and its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirAttrs {
    /// Permission bits.
    pub mode: u32,
    /// Owner, when set.
    pub uid: Option<u32>,
    /// Group, when set.
    pub gid: Option<u32>,
}

impl DirAttrs {
    /// Why an existing directory with `found` attributes is not the one asked for, if it is
    /// not: other permission bits, or another owner or group where one was asked for.
    pub fn conflict(&self, found: &DirAttrs) -> Option<String> {
        if found.mode & 0o7777 != self.mode & 0o7777 {
            return Some(format!(
                "mode {:04o}, not the requested {:04o}",
                found.mode & 0o7777,
                self.mode & 0o7777
            ));
        }
        match (self.uid, found.uid) {
            (Some(want), Some(have)) if want != have => {
                return Some(format!("owner {have}, not the requested {want}"));
            }
            _ => {}
        }
        match (self.gid, found.gid) {
            (Some(want), Some(have)) if want != have => {
                Some(format!("group {have}, not the requested {want}"))
            }
            _ => None,
        }
    }
}

/// The directories of one backend instance, by path under its base directory.
#[async_trait]
pub trait Directories: Send + Sync + Debug {
    /// Makes the directory `path` (its parent must exist). An existing directory with the
    /// asked attributes is success (`false`: not made now); one with others, or anything else
    /// of that name, is ALREADY_EXISTS (see [`DirAttrs::conflict`]).
    async fn make_dir(&self, path: &[&str], attrs: DirAttrs) -> Result<bool>;
    /// Removes `path` and everything under it; a path that is gone is success.
    async fn remove_tree(&self, path: &[&str]) -> Result<()>;
    /// Renames the last component of `path` to `new_name` in the same parent; gone is success.
    async fn rename(&self, path: &[&str], new_name: &str) -> Result<()>;
    /// Writes `content` as the whole of the regular file `path` (its parent must exist),
    /// made with mode 0600 when new. With `exclusive`, only a new file is written: `false`
    /// when it exists already (the server decides, so of racing callers exactly one wins).
    async fn write_file(&self, path: &[&str], content: &[u8], exclusive: bool) -> Result<bool>;
    /// Whether anything named `path` exists.
    async fn exists(&self, path: &[&str]) -> Result<bool>;
    /// The content of the regular file `path` (at most [`MAX_FILE`] bytes); `None` when it
    /// does not exist.
    async fn read_file(&self, path: &[&str]) -> Result<Option<Vec<u8>>>;
    /// Every regular file directly in the directory `path`, with its content (each at most
    /// [`MAX_FILE`] bytes) and modification time; none when the directory does not exist.
    async fn read_files(&self, path: &[&str]) -> Result<Vec<DirFile>>;
    /// Whether the server answers (mounts the export and finds the base directory).
    async fn check(&self) -> Result<()>;
}

/// A regular file read by [`Directories::read_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFile {
    /// Its name in the directory.
    pub name: String,
    /// Its content.
    pub content: Vec<u8>,
    /// When it was last written, when the server says.
    pub modified: Option<std::time::SystemTime>,
}

/// Most entries [`Directories::read_files`] reads in one directory (the marks of as many
/// volumes), so a directory filled by mistake cannot hold the controller for long.
pub const MAX_FILES: usize = 100_000;

/// Most bytes [`Directories::read_file`] reads: the files it serves (volume marks) are a few
/// hundred bytes, and a bound keeps a replaced file from filling the controller's memory.
pub const MAX_FILE: u32 = 64 * 1024;

/// Deepest tree [`Directories::remove_tree`] walks: volumes are not that deep, and a bound
/// keeps a hostile or looping tree from running the controller out of stack.
const MAX_DEPTH: usize = 64;

/// [`Directories`] over NFSv3: one MOUNT and connection per call (they are rare).
#[derive(Debug, Clone)]
pub struct Nfs3Directories {
    server: String,
    export: String,
    base: Vec<String>,
    uid: u32,
    gid: u32,
    privileged_port: bool,
}

type Conn = Nfs3Connection<<TokioConnector as nfs3_client::net::Connector>::Connection>;

impl Nfs3Directories {
    /// Directories under `base` of `export` on `server`, spoken to as `uid`/`gid`.
    pub fn new(
        server: &str,
        export: &str,
        base: impl IntoIterator<Item = String>,
        uid: u32,
        gid: u32,
        privileged_port: bool,
    ) -> Self {
        Self {
            server: server.to_owned(),
            export: export.to_owned(),
            base: base.into_iter().collect(),
            uid,
            gid,
            privileged_port,
        }
    }

    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::Unavailable(format!(
            "NFS server {}:{}: {what}: {e}",
            self.server, self.export
        ))
    }

    /// Mounts the export and returns the connection with the base directory's handle.
    async fn connect(&self) -> Result<(Conn, nfs_fh3)> {
        // nfs3_client wants an address: resolve a host name here.
        let addr = tokio::net::lookup_host((self.server.as_str(), 0))
            .await
            .map_err(|e| self.unavailable("cannot resolve the server", e))?
            .next()
            .ok_or_else(|| self.unavailable("cannot resolve the server", "no address"))?;
        let credential = opaque_auth::auth_unix(&auth_unix {
            uid: self.uid,
            gid: self.gid,
            ..auth_unix::default()
        });
        let mut conn =
            Nfs3ConnectionBuilder::new(TokioConnector, addr.ip().to_string(), &self.export)
                .connect_from_privileged_port(self.privileged_port)
                .credential(credential)
                .mount()
                .await
                .map_err(|e| self.unavailable("cannot mount the export", e))?;
        let mut dir = conn.root_nfs_fh3();
        for part in &self.base {
            dir = match lookup(&mut conn, &dir, part).await {
                Ok(Some((fh, ftype3::NF3DIR))) => fh,
                found => {
                    self.release(conn).await;
                    found?;
                    return Err(Error::FailedPrecondition(format!(
                        "base directory {} does not exist in {}:{}; create it on the NFS server",
                        self.base.join("/"),
                        self.server,
                        self.export
                    )));
                }
            };
        }
        Ok((conn, dir))
    }

    /// Unmounts (UMNT); a server that does not answer any more has forgotten us anyway.
    async fn release(&self, conn: Conn) {
        if let Err(e) = conn.unmount().await {
            tracing::debug!(server = %self.server, error = %e, "NFS UMNT failed");
        }
    }

    /// The handle of `path`'s parent, or NOT_FOUND.
    async fn parent(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
    ) -> Result<Option<nfs_fh3>> {
        let mut dir = base;
        for part in &path[..path.len().saturating_sub(1)] {
            match lookup(conn, &dir, part).await? {
                Some((fh, ftype3::NF3DIR)) => dir = fh,
                _ => return Ok(None),
            }
        }
        Ok(Some(dir))
    }

    /// The handle of `path`'s parent, which must exist (NOT_FOUND otherwise).
    async fn existing_parent(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
    ) -> Result<nfs_fh3> {
        self.parent(conn, base, path).await?.ok_or_else(|| {
            Error::NotFound(format!(
                "the parent of {} does not exist on the NFS server",
                path.join("/")
            ))
        })
    }
}

fn name(s: &str) -> filename3<'static> {
    filename3::from(s.as_bytes().to_vec())
}

fn nfs_error(what: &str, status: nfsstat3) -> Error {
    let msg = format!("NFS {what} failed: {status:?}");
    match status {
        nfsstat3::NFS3ERR_ACCES | nfsstat3::NFS3ERR_PERM | nfsstat3::NFS3ERR_ROFS => {
            Error::FailedPrecondition(format!(
                "{msg}; the server refuses the controller's identity (auth_uid/auth_gid, root squash, a read-only export)"
            ))
        }
        nfsstat3::NFS3ERR_NOSPC | nfsstat3::NFS3ERR_DQUOT => Error::ResourceExhausted(msg),
        nfsstat3::NFS3ERR_JUKEBOX | nfsstat3::NFS3ERR_IO | nfsstat3::NFS3ERR_SERVERFAULT => {
            Error::Unavailable(msg)
        }
        _ => Error::Internal(msg),
    }
}

fn rpc_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NFS {what} failed: {e}"))
}

/// Looks `part` up in `dir`: its handle and type, or `None` when it does not exist.
async fn lookup(conn: &mut Conn, dir: &nfs_fh3, part: &str) -> Result<Option<(nfs_fh3, ftype3)>> {
    Ok(lookup_attrs(conn, dir, part)
        .await?
        .map(|(fh, kind, _)| (fh, kind)))
}

/// [`lookup`], with the object's attributes when the server sends them.
async fn lookup_attrs(
    conn: &mut Conn,
    dir: &nfs_fh3,
    part: &str,
) -> Result<Option<(nfs_fh3, ftype3, Option<DirAttrs>)>> {
    let res = conn
        .lookup(&nfs3::LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name(part),
            },
        })
        .await
        .map_err(|e| rpc_error("LOOKUP", e))?;
    match res {
        Nfs3Result::Ok(ok) => Ok(Some(match ok.obj_attributes {
            Nfs3Option::Some(a) => (
                ok.object,
                a.type_,
                Some(DirAttrs {
                    mode: a.mode,
                    uid: Some(a.uid),
                    gid: Some(a.gid),
                }),
            ),
            Nfs3Option::None => (ok.object, ftype3::NF3REG, None),
        })),
        Nfs3Result::Err((nfsstat3::NFS3ERR_NOENT, _)) => Ok(None),
        Nfs3Result::Err((status, _)) => Err(nfs_error("LOOKUP", status)),
    }
}

/// The names in `dir`, without `.` and `..`.
async fn list(conn: &mut Conn, dir: &nfs_fh3) -> Result<Vec<String>> {
    let mut names = Vec::new();
    let (mut cookie, mut verf) = (0, nfs3::cookieverf3::default());
    loop {
        let res = conn
            .readdir(&READDIR3args {
                dir: dir.clone(),
                cookie,
                cookieverf: verf,
                count: 64 * 1024,
            })
            .await
            .map_err(|e| rpc_error("READDIR", e))?;
        let ok = match res {
            Nfs3Result::Ok(ok) => ok,
            Nfs3Result::Err((status, _)) => return Err(nfs_error("READDIR", status)),
        };
        verf = ok.cookieverf;
        let entries = ok.reply.entries.into_inner();
        for e in &entries {
            let n = String::from_utf8_lossy(e.name.0.as_ref()).into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
            cookie = e.cookie;
        }
        if ok.reply.eof || entries.is_empty() {
            return Ok(names);
        }
    }
}

/// Removes everything inside `dir` (a handle), depth-first, then nothing else.
async fn empty(conn: &mut Conn, dir: &nfs_fh3, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::FailedPrecondition(format!(
            "the directory tree is deeper than {MAX_DEPTH} levels; remove it by hand"
        )));
    }
    for entry in list(conn, dir).await? {
        let Some((fh, kind)) = lookup(conn, dir, &entry).await? else {
            continue;
        };
        if kind == ftype3::NF3DIR {
            Box::pin(empty(conn, &fh, depth + 1)).await?;
            remove(conn, dir, &entry, true).await?;
        } else {
            remove(conn, dir, &entry, false).await?;
        }
    }
    Ok(())
}

/// REMOVE or RMDIR `entry` in `dir`; already gone is success.
async fn remove(conn: &mut Conn, dir: &nfs_fh3, entry: &str, is_dir: bool) -> Result<()> {
    let object = diropargs3 {
        dir: dir.clone(),
        name: name(entry),
    };
    let status = if is_dir {
        match conn
            .rmdir(&RMDIR3args { object })
            .await
            .map_err(|e| rpc_error("RMDIR", e))?
        {
            Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
            Nfs3Result::Err((s, _)) => s,
        }
    } else {
        match conn
            .remove(&REMOVE3args { object })
            .await
            .map_err(|e| rpc_error("REMOVE", e))?
        {
            Nfs3Result::Ok(_) => nfsstat3::NFS3_OK,
            Nfs3Result::Err((s, _)) => s,
        }
    };
    match status {
        nfsstat3::NFS3_OK | nfsstat3::NFS3ERR_NOENT => Ok(()),
        s => Err(nfs_error(if is_dir { "RMDIR" } else { "REMOVE" }, s)),
    }
}

impl Nfs3Directories {
    async fn make_dir_on(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
        attrs: DirAttrs,
    ) -> Result<bool> {
        let last = path.last().copied().unwrap_or_default();
        let parent = self.existing_parent(conn, base, path).await?;
        let existing = |kind: ftype3, found: Option<DirAttrs>| {
            if kind != ftype3::NF3DIR {
                return Err(Error::AlreadyExists(format!(
                    "{} exists on the NFS server but is not a directory",
                    path.join("/")
                )));
            }
            match found.and_then(|found| attrs.conflict(&found)) {
                Some(why) => Err(Error::AlreadyExists(format!(
                    "directory {} exists with {why}: it is not the volume asked for",
                    path.join("/")
                ))),
                None => Ok(false),
            }
        };
        if let Some((_, kind, found)) = lookup_attrs(conn, &parent, last).await? {
            return existing(kind, found);
        }
        let res = conn
            .mkdir(&MKDIR3args {
                where_: diropargs3 {
                    dir: parent.clone(),
                    name: name(last),
                },
                attributes: sattr3 {
                    mode: Nfs3Option::Some(attrs.mode),
                    uid: attrs.uid.map_or(Nfs3Option::None, Nfs3Option::Some),
                    gid: attrs.gid.map_or(Nfs3Option::None, Nfs3Option::Some),
                    ..sattr3::default()
                },
            })
            .await
            .map_err(|e| rpc_error("MKDIR", e))?;
        match res {
            Nfs3Result::Ok(_) => Ok(true),
            // Made by a concurrent call between the lookup and the mkdir: the same answer.
            Nfs3Result::Err((nfsstat3::NFS3ERR_EXIST, _)) => {
                match lookup_attrs(conn, &parent, last).await? {
                    Some((_, kind, found)) => existing(kind, found),
                    None => Err(nfs_error("MKDIR", nfsstat3::NFS3ERR_EXIST)),
                }
            }
            Nfs3Result::Err((status, _)) => Err(nfs_error("MKDIR", status)),
        }
    }

    async fn remove_tree_on(&self, conn: &mut Conn, base: nfs_fh3, path: &[&str]) -> Result<()> {
        let last = path.last().copied().unwrap_or_default();
        let Some(parent) = self.parent(conn, base, path).await? else {
            return Ok(());
        };
        match lookup(conn, &parent, last).await? {
            None => Ok(()),
            Some((fh, ftype3::NF3DIR)) => {
                empty(conn, &fh, 1).await?;
                remove(conn, &parent, last, true).await
            }
            Some(_) => remove(conn, &parent, last, false).await,
        }
    }

    async fn rename_on(
        &self,
        conn: &mut Conn,
        base: nfs_fh3,
        path: &[&str],
        new_name: &str,
    ) -> Result<()> {
        let last = path.last().copied().unwrap_or_default();
        let Some(parent) = self.parent(conn, base, path).await? else {
            return Ok(());
        };
        if lookup(conn, &parent, last).await?.is_none() {
            return Ok(());
        }
        let res = conn
            .rename(&RENAME3args {
                from: diropargs3 {
                    dir: parent.clone(),
                    name: name(last),
                },
                to: diropargs3 {
                    dir: parent.clone(),
                    name: name(new_name),
                },
            })
            .await
            .map_err(|e| rpc_error("RENAME", e))?;
        match res {
            Nfs3Result::Ok(_) => Ok(()),
            Nfs3Result::Err((status, _)) => Err(nfs_error("RENAME", status)),
        }
    }
}

// Each operation runs on a fresh MOUNT of the export (they are rare) and unmounts again
// whatever the outcome, so the server keeps no record of a client that is gone.
#[async_trait]
impl Directories for Nfs3Directories {
    async fn make_dir(&self, path: &[&str], attrs: DirAttrs) -> Result<bool> {
        outside(async {
            let (mut conn, base) = self.connect().await?;
            let made = self.make_dir_on(&mut conn, base, path, attrs).await;
            self.release(conn).await;
            made
        })
        .await
    }

    async fn remove_tree(&self, path: &[&str]) -> Result<()> {
        outside(async {
            let (mut conn, base) = self.connect().await?;
            let removed = self.remove_tree_on(&mut conn, base, path).await;
            self.release(conn).await;
            removed
        })
        .await
    }

    async fn rename(&self, path: &[&str], new_name: &str) -> Result<()> {
        outside(async {
            let (mut conn, base) = self.connect().await?;
            let renamed = self.rename_on(&mut conn, base, path, new_name).await;
            self.release(conn).await;
            renamed
        })
        .await
    }

    async fn write_file(&self, path: &[&str], content: &[u8], exclusive: bool) -> Result<bool> {
        let (mut conn, base) = self.connect().await?;
        let written = self
            .write_file_on(&mut conn, base, path, content, exclusive)
            .await;
        self.release(conn).await;
        written
    }

    async fn exists(&self, path: &[&str]) -> Result<bool> {
        let (mut conn, base) = self.connect().await?;
        let found = match self.parent(&mut conn, base, path).await {
            Ok(Some(parent)) => {
                let last = path.last().copied().unwrap_or_default();
                lookup(&mut conn, &parent, last).await.map(|f| f.is_some())
            }
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        self.release(conn).await;
        found
    }

    async fn read_file(&self, path: &[&str]) -> Result<Option<Vec<u8>>> {
        let (mut conn, base) = self.connect().await?;
        let read = self.read_file_on(&mut conn, base, path).await;
        self.release(conn).await;
        read
    }

    async fn read_files(&self, path: &[&str]) -> Result<Vec<DirFile>> {
        outside(async {
            let (mut conn, base) = self.connect().await?;
            let read = self.read_files_on(&mut conn, base, path).await;
            self.release(conn).await;
            read
        })
        .await
    }

    async fn check(&self) -> Result<()> {
        outside(async {
            let (conn, _) = self.connect().await?;
            self.release(conn).await;
            Ok(())
        })
        .await
    }
}
