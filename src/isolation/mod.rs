//! What keeps a pool to itself: the identity, jail and limits its workers take on
//! (`privileges`), who may connect to its socket (`clients`, `acl`).
//!
//! Names are resolved once, in the master, before anything forks: errors show at start
//! and under `-t`, and a worker inside a chroot never needs the user database.

pub mod acl;
pub mod clients;
pub mod privileges;

pub use privileges::{Prepared, Privileges, apply_master_limits, check_master_limits, prepare};

use nix::unistd::{Gid, Group, Uid, User};

/// A user by name or number, as php-fpm accepts them: digits only means a number.
pub fn lookup_user(name: &str) -> Option<(Uid, Option<User>)> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        let uid = Uid::from_raw(name.parse().ok()?);
        return Some((uid, User::from_uid(uid).ok().flatten()));
    }
    let user = User::from_name(name).ok().flatten()?;
    Some((user.uid, Some(user)))
}

/// A group by name or number.
pub fn lookup_group(name: &str) -> Option<Gid> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Gid::from_raw(name.parse().ok()?));
    }
    Group::from_name(name).ok().flatten().map(|group| group.gid)
}

/// The names in a comma-separated list (`listen.acl_users = www-data, nginx`).
pub fn name_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_names() {
        assert_eq!(lookup_user("0").map(|(uid, _)| uid), Some(Uid::from_raw(0)));
        assert_eq!(
            lookup_user("root").map(|(uid, _)| uid),
            Some(Uid::from_raw(0))
        );
        assert_eq!(lookup_group("0"), Some(Gid::from_raw(0)));
        assert_eq!(lookup_group("root"), Some(Gid::from_raw(0)));
        assert_eq!(lookup_user("no-such-user-here"), None);
        assert_eq!(lookup_group("no-such-group-here"), None);
        // A uid nobody has is still a uid.
        let (uid, user) = lookup_user("4000000000").expect("a number");
        assert_eq!((uid.as_raw(), user.is_none()), (4_000_000_000, true));
        assert_eq!(lookup_user("99999999999"), None, "beyond u32");
    }

    #[test]
    fn name_lists() {
        let names: Vec<_> = name_list(" www-data,nginx ,, 33").collect();
        assert_eq!(names, ["www-data", "nginx", "33"]);
        assert_eq!(name_list("").count(), 0);
    }
}
