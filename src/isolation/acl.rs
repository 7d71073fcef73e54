//! `listen.acl_users` / `listen.acl_groups`: a POSIX access ACL on a pool's unix socket,
//! giving each named user and group read and write (connect) permission, as php-fpm does
//! with libacl. Written here directly as the `system.posix_acl_access` extended attribute,
//! in the kernel's format (linux/posix_acl_xattr.h), so no libacl is needed.
//!
//! The ACL keeps the file's mode for its owner, group and others, adds the named entries,
//! and a mask that lets them through; once it is set, the mode's group bits show the mask.
//! When either directive is set, listen.owner and listen.group are not used.

use super::{lookup_group, lookup_user, name_list};
use crate::config::PoolConfig;
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const ATTRIBUTE: &std::ffi::CStr = c"system.posix_acl_access";
const VERSION: u32 = 2;

pub const TAG_USER_OBJ: u16 = 0x01;
pub const TAG_USER: u16 = 0x02;
pub const TAG_GROUP_OBJ: u16 = 0x04;
pub const TAG_GROUP: u16 = 0x08;
pub const TAG_MASK: u16 = 0x10;
pub const TAG_OTHER: u16 = 0x20;
/// The id of entries that name no one (owner, owning group, mask, others).
pub const NO_ID: u32 = u32::MAX;
/// Read and write: what connecting to a unix socket needs.
const READ_WRITE: u16 = 0o6;

/// One ACL entry as the kernel stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub tag: u16,
    pub id: u32,
    pub perm: u16,
}

/// The users and groups a socket's ACL lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketAcl {
    pub users: Vec<Uid>,
    pub groups: Vec<Gid>,
}

/// The pool's ACL, when `listen.acl_users` or `listen.acl_groups` names anyone. Errors use
/// php-fpm's words.
pub fn resolve(pool: &PoolConfig) -> Result<Option<SocketAcl>, String> {
    let users_text = pool.listen_acl_users.as_deref().unwrap_or("");
    let groups_text = pool.listen_acl_groups.as_deref().unwrap_or("");
    let mut acl = SocketAcl {
        users: Vec::new(),
        groups: Vec::new(),
    };
    for user in name_list(users_text) {
        let (uid, _) = lookup_user(user)
            .ok_or_else(|| format!("[pool {}] cannot get uid for user '{user}'", pool.name))?;
        acl.users.push(uid);
    }
    for group in name_list(groups_text) {
        let gid = lookup_group(group)
            .ok_or_else(|| format!("[pool {}] cannot get gid for group '{group}'", pool.name))?;
        acl.groups.push(gid);
    }
    if acl.users.is_empty() && acl.groups.is_empty() {
        return Ok(None);
    }
    Ok(Some(acl))
}

/// The entries for a file of `mode` opened to `acl`, in the order the kernel requires.
pub fn entries(mode: u32, acl: &SocketAcl) -> Vec<Entry> {
    let bits = |shift: u32| ((mode >> shift) & 0o7) as u16;
    let mut named: Vec<Entry> = acl
        .users
        .iter()
        .map(|uid| Entry {
            tag: TAG_USER,
            id: uid.as_raw(),
            perm: READ_WRITE,
        })
        .chain(acl.groups.iter().map(|gid| Entry {
            tag: TAG_GROUP,
            id: gid.as_raw(),
            perm: READ_WRITE,
        }))
        .collect();
    named.sort();
    named.dedup();
    let group_class = named.iter().fold(bits(3), |mask, entry| mask | entry.perm);
    let mut all = vec![
        Entry {
            tag: TAG_USER_OBJ,
            id: NO_ID,
            perm: bits(6),
        },
        Entry {
            tag: TAG_GROUP_OBJ,
            id: NO_ID,
            perm: bits(3),
        },
        Entry {
            tag: TAG_MASK,
            id: NO_ID,
            perm: group_class,
        },
        Entry {
            tag: TAG_OTHER,
            id: NO_ID,
            perm: bits(0),
        },
    ];
    all.extend(named);
    // By tag, then by id: USER_OBJ, USERs, GROUP_OBJ, GROUPs, MASK, OTHER.
    all.sort();
    all
}

/// The attribute's bytes: a little-endian version, then (tag, perm, id) per entry.
pub fn encode(entries: &[Entry]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(4 + 8 * entries.len());
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    for entry in entries {
        bytes.extend_from_slice(&entry.tag.to_le_bytes());
        bytes.extend_from_slice(&entry.perm.to_le_bytes());
        bytes.extend_from_slice(&entry.id.to_le_bytes());
    }
    bytes
}

pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let (version, body) = bytes
        .split_first_chunk::<4>()
        .ok_or("shorter than its header")?;
    if u32::from_le_bytes(*version) != VERSION {
        return Err(format!("version {}", u32::from_le_bytes(*version)));
    }
    if body.len() % 8 != 0 {
        return Err(format!("{} bytes of entries", body.len()));
    }
    Ok(body
        .chunks_exact(8)
        .map(|chunk| Entry {
            tag: u16::from_le_bytes([chunk[0], chunk[1]]),
            perm: u16::from_le_bytes([chunk[2], chunk[3]]),
            id: u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
        })
        .collect())
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("'{}' contains a NUL byte", path.display()))
}

/// Set the ACL on the socket file at `path`, created with `mode`.
pub fn apply(path: &Path, mode: u32, acl: &SocketAcl) -> Result<(), String> {
    let value = encode(&entries(mode, acl));
    let file = c_path(path)?;
    // SAFETY: both strings are NUL-terminated and live across the call; the value pointer
    // and length describe `value`, which the kernel only reads.
    let result = unsafe {
        nix::libc::setxattr(
            file.as_ptr(),
            ATTRIBUTE.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    match Errno::result(result) {
        Ok(_) => Ok(()),
        Err(Errno::EOPNOTSUPP) => Err(format!(
            "failed to write the ACL of the socket '{}': the file system does not support POSIX \
             ACLs (listen.acl_users/listen.acl_groups need them; use listen.owner, \
             listen.group and listen.mode instead)",
            path.display()
        )),
        Err(e) => Err(format!(
            "failed to write the ACL of the socket '{}': {e}",
            path.display()
        )),
    }
}

/// The access ACL of `path`; empty when it has none beyond its mode.
pub fn read(path: &Path) -> Result<Vec<Entry>, String> {
    let file = c_path(path)?;
    let mut buffer = vec![0u8; 4 + 8 * 64];
    // SAFETY: the strings are NUL-terminated; the kernel writes at most `buffer.len()`
    // bytes into `buffer`.
    let result = unsafe {
        nix::libc::getxattr(
            file.as_ptr(),
            ATTRIBUTE.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    match Errno::result(result) {
        Ok(length) => decode(&buffer[..length as usize]),
        Err(Errno::ENODATA) => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read the ACL of '{}': {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenAddress;

    fn acl(users: &[u32], groups: &[u32]) -> SocketAcl {
        SocketAcl {
            users: users.iter().map(|&u| Uid::from_raw(u)).collect(),
            groups: groups.iter().map(|&g| Gid::from_raw(g)).collect(),
        }
    }

    fn entry(tag: u16, id: u32, perm: u16) -> Entry {
        Entry { tag, id, perm }
    }

    #[test]
    fn entries_are_ordered_deduplicated_and_masked() {
        let got = entries(0o640, &acl(&[1000, 33, 1000], &[44, 33]));
        assert_eq!(
            got,
            [
                entry(TAG_USER_OBJ, NO_ID, 6),
                entry(TAG_USER, 33, 6),
                entry(TAG_USER, 1000, 6),
                entry(TAG_GROUP_OBJ, NO_ID, 4),
                entry(TAG_GROUP, 33, 6),
                entry(TAG_GROUP, 44, 6),
                entry(TAG_MASK, NO_ID, 6),
                entry(TAG_OTHER, NO_ID, 0),
            ]
        );
    }

    #[test]
    fn encoding_is_the_kernels_and_round_trips() {
        let list = entries(0o660, &acl(&[33], &[]));
        let bytes = encode(&list);
        assert_eq!(&bytes[..4], &[2, 0, 0, 0]);
        // USER_OBJ rw-, undefined id.
        assert_eq!(&bytes[4..12], &[1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff]);
        // USER 33 rw-.
        assert_eq!(&bytes[12..20], &[2, 0, 6, 0, 33, 0, 0, 0]);
        assert_eq!(decode(&bytes), Ok(list));
        assert!(decode(&[1, 0, 0, 0]).is_err());
        assert!(decode(&[2, 0, 0, 0, 1]).is_err());
        assert!(decode(&[2]).is_err());
    }

    #[test]
    fn resolve_names_and_numbers() {
        let mut pool = PoolConfig::new("www", ListenAddress::Unix("/run/x.sock".into()));
        assert_eq!(resolve(&pool), Ok(None));
        pool.listen_acl_users = Some("root, 4242".into());
        pool.listen_acl_groups = Some("".into());
        assert_eq!(resolve(&pool), Ok(Some(acl(&[0, 4242], &[]))));
        pool.listen_acl_groups = Some("no-such-group-here".into());
        assert_eq!(
            resolve(&pool),
            Err("[pool www] cannot get gid for group 'no-such-group-here'".into())
        );
    }

    #[test]
    fn set_and_read_back_on_a_real_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sock");
        std::fs::write(&path, b"").expect("file");
        let wanted = acl(&[4242], &[4343]);
        match apply(&path, 0o660, &wanted) {
            Ok(()) => {}
            Err(e) if e.contains("does not support POSIX ACLs") => {
                eprintln!("SKIPPED: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        assert_eq!(read(&path), Ok(entries(0o660, &wanted)));
    }
}
