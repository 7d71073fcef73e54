//! The identity, jail and limits of a pool's workers, as php-fpm sets them
//! (`fpm_unix_conf_wp` in the master, `fpm_unix_init_child` in each child), and the
//! master's own global limits.
//!
//! A worker applies them once, right after fork and before it accepts anything; every
//! CGI child it starts inherits them. The rules:
//! - The master runs as root: a pool must name a `user` (its primary group unless `group`
//!   says otherwise) that is not root, unless `-R` is given. Supplementary groups are the
//!   user's (what initgroups(3) would set), looked up here in the master so that a worker
//!   in a chroot needs no user database.
//! - The master is not root: `user`, `group`, `chroot` and `process.priority` cannot be
//!   honoured; each is ignored with a notice, as php-fpm does.
//! - Order in the worker: rlimits, chroot, chdir (or `/` after a chroot), priority,
//!   supplementary groups, gid, uid, dumpable. Dropping root comes last but one, since
//!   everything before it may need root; PR_SET_DUMPABLE comes after it, because changing
//!   credentials clears that flag.

use super::{acl, lookup_group, lookup_user};
use crate::cgi::EnvPolicy;
use crate::config::{Config, GlobalConfig, ListenAddress, PoolConfig, RlimitCore};
use nix::sys::resource::{RLIM_INFINITY, Resource, setrlimit};
use nix::unistd::{Gid, Uid, getegid, geteuid, getgrouplist, getuid};
use std::ffi::{CString, OsStr, OsString};
use std::path::{Path, PathBuf};

/// What [`prepare`] found: one entry per pool, in the configuration's order, and the
/// notices about directives that cannot apply (logged at NOTICE, like php-fpm's).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub pools: Vec<Privileges>,
    pub notices: Vec<String>,
}

/// Everything a worker of one pool changes about itself right after fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Privileges {
    pool: String,
    identity: Option<Identity>,
    chroot: Option<PathBuf>,
    chdir: Option<PathBuf>,
    rlimit_files: Option<u64>,
    rlimit_core: Option<RlimitCore>,
    priority: Option<i32>,
    dumpable: bool,
}

/// Who a worker becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    uid: Uid,
    gid: Gid,
    /// Supplementary groups, the primary one included.
    groups: Vec<Gid>,
    /// For the USER and HOME variables, as php-fpm sets them; unknown for a bare number.
    name: Option<String>,
    home: Option<PathBuf>,
}

/// Resolve every pool's privileges for a master running with the current effective uid.
/// `allow_root` is `-R`. Errors are one line each, naming the pool.
pub fn prepare(config: &Config, allow_root: bool) -> Result<Prepared, Vec<String>> {
    prepare_as(config, geteuid().is_root(), allow_root)
}

fn prepare_as(config: &Config, is_root: bool, allow_root: bool) -> Result<Prepared, Vec<String>> {
    let mut errors = Vec::new();
    let mut notices = Vec::new();
    let mut pools = Vec::new();
    for pool in &config.pools {
        check_socket_names(pool, &mut errors);
        match pool_privileges(pool, is_root, allow_root, &mut notices) {
            Ok(privileges) => pools.push(privileges),
            Err(error) => errors.push(error),
        }
    }
    if errors.is_empty() {
        Ok(Prepared { pools, notices })
    } else {
        Err(errors)
    }
}

fn pool_privileges(
    pool: &PoolConfig,
    is_root: bool,
    allow_root: bool,
    notices: &mut Vec<String>,
) -> Result<Privileges, String> {
    let name = &pool.name;
    let mut privileges = Privileges {
        pool: name.clone(),
        identity: None,
        chroot: None,
        chdir: pool.chdir.clone(),
        rlimit_files: pool.rlimit_files,
        rlimit_core: pool.rlimit_core,
        priority: None,
        dumpable: pool.process_dumpable,
    };
    if !is_root {
        let ignored = [
            ("user", pool.user.is_some()),
            ("group", pool.group.is_some()),
            ("chroot", pool.chroot.is_some()),
            ("process.priority", pool.process_priority.is_some()),
        ];
        for (directive, set) in ignored {
            if set {
                notices.push(format!(
                    "[pool {name}] '{directive}' directive is ignored when FPM is not running as root"
                ));
            }
        }
        return Ok(privileges);
    }
    privileges.chroot = pool.chroot.clone();
    privileges.priority = pool.process_priority;
    privileges.identity = identity(pool)?;
    let runs_as_root = match &privileges.identity {
        None => true,
        Some(identity) => identity.uid.is_root() || identity.gid.as_raw() == 0,
    };
    if runs_as_root && !allow_root {
        return Err(format!(
            "{}[pool {name}] please specify user and group other than root (the master runs as \
             root: set 'user', or start with -R to let workers run as root)",
            pool.location_of("user")
        ));
    }
    Ok(privileges)
}

/// The identity `user` and `group` name, for a master running as root.
fn identity(pool: &PoolConfig) -> Result<Option<Identity>, String> {
    let name = &pool.name;
    let group = match &pool.group {
        None => None,
        Some(group) => Some(lookup_group(group).ok_or_else(|| {
            format!(
                "{}[pool {name}] cannot get gid for group '{group}'",
                pool.location_of("group")
            )
        })?),
    };
    let Some(user) = &pool.user else {
        // Only a group (with -R): switch the group, keep the user.
        return Ok(group.map(|gid| Identity {
            uid: geteuid(),
            gid,
            groups: vec![gid],
            name: None,
            home: None,
        }));
    };
    let (uid, entry) = lookup_user(user).ok_or_else(|| {
        format!(
            "{}[pool {name}] cannot get uid for user '{user}'",
            pool.location_of("user")
        )
    })?;
    let gid = match (group, &entry) {
        (Some(gid), _) => gid,
        (None, Some(entry)) => entry.gid,
        (None, None) => {
            return Err(format!(
                "{}[pool {name}] user '{user}' has no entry in the user database, so it has no \
                 primary group: set 'group' as well",
                pool.location_of("user")
            ));
        }
    };
    let groups = match &entry {
        Some(entry) => supplementary_groups(&entry.name, gid)
            .map_err(|e| format!("[pool {name}] cannot get the groups of user '{user}': {e}"))?,
        None => vec![gid],
    };
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        name: entry.as_ref().map(|entry| entry.name.clone()),
        home: entry.map(|entry| entry.dir),
    }))
}

/// initgroups(3)'s list, computed here rather than in the worker.
fn supplementary_groups(user: &str, gid: Gid) -> Result<Vec<Gid>, String> {
    let name = CString::new(user).map_err(|e| e.to_string())?;
    let mut groups = getgrouplist(&name, gid).map_err(|e| e.to_string())?;
    if !groups.contains(&gid) {
        groups.insert(0, gid);
    }
    Ok(groups)
}

/// listen.owner, listen.group and the ACL names must exist, or the socket cannot be made;
/// say so under `-t` too, not only at start.
fn check_socket_names(pool: &PoolConfig, errors: &mut Vec<String>) {
    if !matches!(pool.listen, ListenAddress::Unix(_)) {
        return;
    }
    let name = &pool.name;
    if let Some(owner) = &pool.listen_owner
        && lookup_user(owner).is_none()
    {
        errors.push(format!(
            "{}[pool {name}] listen.owner: cannot get uid for user '{owner}'",
            pool.location_of("listen.owner")
        ));
    }
    if let Some(group) = &pool.listen_group
        && lookup_group(group).is_none()
    {
        errors.push(format!(
            "{}[pool {name}] listen.group: cannot get gid for group '{group}'",
            pool.location_of("listen.group")
        ));
    }
    if let Err(error) = acl::resolve(pool) {
        errors.push(error);
    }
}

impl Privileges {
    /// Nothing to change: for workers of a master that is not root and sets no limits.
    pub fn unchanged(pool: &str) -> Privileges {
        Privileges {
            pool: pool.to_string(),
            identity: None,
            chroot: None,
            chdir: None,
            rlimit_files: None,
            rlimit_core: None,
            priority: None,
            dumpable: false,
        }
    }

    /// The uid workers switch to, if they switch.
    pub fn uid(&self) -> Option<Uid> {
        self.identity.as_ref().map(|identity| identity.uid)
    }

    /// The jail workers enter, if any.
    pub fn chroot(&self) -> Option<&Path> {
        self.chroot.as_deref()
    }

    /// Apply everything, in the worker, right after fork. An error means the worker must
    /// not serve: it names the pool and the call that failed. rlimit and dumpable failures
    /// are only logged, as php-fpm does.
    pub fn apply(&self) -> Result<(), String> {
        let pool = &self.pool;
        if let Some(files) = self.rlimit_files
            && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, files, files)
        {
            log::error!(
                "[pool {pool}] failed to set rlimit_files for this pool: setrlimit(RLIMIT_NOFILE, {files}): {e}"
            );
        }
        if let Some(core) = self.rlimit_core {
            let limit = core_limit(core);
            if let Err(e) = setrlimit(Resource::RLIMIT_CORE, limit, limit) {
                log::error!(
                    "[pool {pool}] failed to set rlimit_core for this pool: setrlimit(RLIMIT_CORE, {}): {e}",
                    core_text(core)
                );
            }
        }
        if let Some(jail) = &self.chroot {
            nix::unistd::chroot(jail)
                .map_err(|e| format!("[pool {pool}] failed to chroot({}): {e}", jail.display()))?;
        }
        match (&self.chdir, self.chroot.is_some()) {
            (Some(directory), _) => nix::unistd::chdir(directory).map_err(|e| {
                format!(
                    "[pool {pool}] failed to chdir({}): {e}",
                    directory.display()
                )
            })?,
            (None, true) => {
                if let Err(e) = nix::unistd::chdir("/") {
                    log::warn!("[pool {pool}] failed to chdir(/): {e}");
                }
            }
            (None, false) => {}
        }
        if let Some(priority) = self.priority {
            set_priority(priority).map_err(|e| {
                format!("[pool {pool}] unable to set priority {priority} for this new process: {e}")
            })?;
        }
        if let Some(identity) = &self.identity {
            identity.assume(pool)?;
        }
        if self.dumpable
            && let Err(e) = nix::sys::prctl::set_dumpable(true)
        {
            log::error!("[pool {pool}] failed to prctl(PR_SET_DUMPABLE): {e}");
        }
        Ok(())
    }

    /// The CGI children's inherited environment: the master's unless `clear_env`, and, as
    /// php-fpm sets them, USER and HOME of the pool's user. `env[]` and the request's
    /// params still come on top of these, except that USER and HOME are never empty: an
    /// `env[USER] = $USER` read from a master started without USER (systemd starts
    /// services so) gives way to the pool user's, or leaves the variable out, since an
    /// empty USER or HOME breaks scripts that trust them (`cd "$HOME"`, `~` expansion).
    pub fn env_policy(
        &self,
        pool: &PoolConfig,
        master_env: Vec<(OsString, OsString)>,
    ) -> EnvPolicy {
        let is_empty_identity = |name: &OsStr, value: &OsStr| {
            value.is_empty() && IDENTITY_VARIABLES.iter().any(|v| name == *v)
        };
        let mut inherited = if pool.clear_env {
            Vec::new()
        } else {
            master_env
        };
        inherited.retain(|(name, value)| !is_empty_identity(name, value));
        let mut pool_env = pool.env.clone();
        pool_env.retain(|(name, value)| !is_empty_identity(OsStr::new(name), OsStr::new(value)));
        if let Some(identity) = &self.identity {
            let variables = [
                ("USER", identity.name.clone().map(OsString::from)),
                ("HOME", identity.home.clone().map(OsString::from)),
            ];
            for (variable, value) in variables {
                let Some(value) = value.filter(|v| !v.is_empty()) else {
                    continue;
                };
                inherited.retain(|(name, _)| name != variable);
                inherited.push((variable.into(), value));
            }
        }
        EnvPolicy {
            inherited,
            pool_env,
        }
    }
}

/// Variables that name the user scripts run as: set from the pool's user, never empty.
const IDENTITY_VARIABLES: [&str; 2] = ["USER", "HOME"];

impl Identity {
    fn assume(&self, pool: &str) -> Result<(), String> {
        let (uid, gid) = (self.uid, self.gid);
        nix::unistd::setgroups(&self.groups)
            .map_err(|e| format!("[pool {pool}] failed to setgroups({:?}): {e}", self.groups))?;
        nix::unistd::setgid(gid)
            .map_err(|e| format!("[pool {pool}] failed to setgid({gid}): {e}"))?;
        nix::unistd::setuid(uid)
            .map_err(|e| format!("[pool {pool}] failed to setuid({uid}): {e}"))?;
        // Belt and braces: a worker meant to give up root must not still have it.
        if !uid.is_root() && (getuid().is_root() || geteuid().is_root()) {
            return Err(format!("[pool {pool}] still root after setuid({uid})"));
        }
        if gid.as_raw() != 0 && getegid().as_raw() == 0 {
            return Err(format!(
                "[pool {pool}] still in group root after setgid({gid})"
            ));
        }
        Ok(())
    }
}

fn core_limit(core: RlimitCore) -> u64 {
    match core {
        RlimitCore::Unlimited => RLIM_INFINITY,
        RlimitCore::Bytes(bytes) => bytes,
    }
}

fn core_text(core: RlimitCore) -> String {
    match core {
        RlimitCore::Unlimited => "unlimited".to_string(),
        RlimitCore::Bytes(bytes) => bytes.to_string(),
    }
}

fn set_priority(priority: i32) -> nix::Result<()> {
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let result = unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS as _, 0, priority) };
    nix::errno::Errno::result(result).map(drop)
}

/// The master's own limits (php-fpm's `fpm_unix_init_main`): rlimits for the master, and
/// a priority its workers inherit unless their pool sets one. Returns notices; an error
/// means the master must not start.
pub fn apply_master_limits(global: &GlobalConfig) -> Result<Vec<String>, String> {
    let mut notices = Vec::new();
    if let Some(files) = global.rlimit_files {
        setrlimit(Resource::RLIMIT_NOFILE, files, files).map_err(|e| {
            format!(
                "failed to set rlimit_files for the master: setrlimit(RLIMIT_NOFILE, {files}): {e}; \
                 check the system limits or lower rlimit_files"
            )
        })?;
    }
    if let Some(core) = global.rlimit_core {
        let limit = core_limit(core);
        setrlimit(Resource::RLIMIT_CORE, limit, limit).map_err(|e| {
            format!(
                "failed to set rlimit_core for the master: setrlimit(RLIMIT_CORE, {}): {e}",
                core_text(core)
            )
        })?;
    }
    if let Some(priority) = global.process_priority {
        if geteuid().is_root() {
            set_priority(priority).map_err(|e| {
                format!("unable to set priority {priority} for the master process: {e}")
            })?;
        } else {
            notices.push(
                "'process.priority' directive is ignored when FPM is not running as root"
                    .to_string(),
            );
        }
    }
    Ok(notices)
}

/// Whether [`apply_master_limits`] would succeed, without changing anything: a limit
/// above what this process may set (its hard limit; as root, the kernel's `nr_open` for
/// files) fails with EPERM. For `-t` and for a reload, which must refuse here what the
/// new image would refuse at start.
pub fn check_master_limits(global: &GlobalConfig) -> Result<(), String> {
    let root = geteuid().is_root();
    if let Some(files) = global.rlimit_files {
        let bound = if root {
            std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|n| n.trim().parse::<u64>().ok())
        } else {
            nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
                .ok()
                .map(|(_, hard)| hard)
        };
        if let Some(bound) = bound
            && files > bound
        {
            return Err(format!(
                "failed to set rlimit_files for the master: {files} is above the system's \
                 limit of {bound}; check the system limits or lower rlimit_files"
            ));
        }
    }
    if let Some(core) = global.rlimit_core
        && !root
        && let Ok((_, hard)) = nix::sys::resource::getrlimit(Resource::RLIMIT_CORE)
        && hard != RLIM_INFINITY
        && core_limit(core) > hard
    {
        return Err(format!(
            "failed to set rlimit_core for the master: {} is above the hard limit of {hard}",
            core_text(core)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ListenAddress;

    fn config(pools: Vec<PoolConfig>) -> Config {
        Config {
            path: "/etc/cgi-fpm.conf".into(),
            prefix: None,
            global: GlobalConfig::default(),
            pools,
            warnings: Vec::new(),
        }
    }

    fn pool(extra: impl FnOnce(&mut PoolConfig)) -> PoolConfig {
        let mut pool = PoolConfig::new("www", ListenAddress::AnyPort(9000));
        extra(&mut pool);
        pool
    }

    #[test]
    fn root_needs_a_user_unless_allowed() {
        let bare = config(vec![pool(|_| {})]);
        let errors = prepare_as(&bare, true, false).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with("[pool www] please specify user and group other than root"),
            "{errors:?}"
        );
        let allowed = prepare_as(&bare, true, true).expect("-R allows root");
        assert_eq!(allowed.pools[0].identity, None);

        let root = config(vec![pool(|p| p.user = Some("root".into()))]);
        assert!(prepare_as(&root, true, false).is_err());
        let root_group = config(vec![pool(|p| {
            p.user = Some("nobody".into());
            p.group = Some("0".into());
        })]);
        assert!(prepare_as(&root_group, true, false).is_err(), "gid 0 too");
    }

    #[test]
    fn a_user_brings_its_group_and_home() {
        let Some((uid, Some(entry))) = lookup_user("nobody") else {
            eprintln!("SKIPPED: no user 'nobody' on this system");
            return;
        };
        let prepared = prepare_as(
            &config(vec![pool(|p| p.user = Some("nobody".into()))]),
            true,
            false,
        )
        .expect("nobody is fine");
        let identity = prepared.pools[0].identity.clone().expect("an identity");
        assert_eq!(identity.uid, uid);
        assert_eq!(identity.gid, entry.gid);
        assert!(identity.groups.contains(&entry.gid));
        assert_eq!(identity.name.as_deref(), Some("nobody"));
        assert_eq!(prepared.pools[0].uid(), Some(uid));

        // A group given explicitly wins over the user's own.
        let prepared = prepare_as(
            &config(vec![pool(|p| {
                p.user = Some("nobody".into());
                p.group = Some("4242".into());
            })]),
            true,
            false,
        )
        .expect("numeric group");
        let identity = prepared.pools[0].identity.clone().expect("an identity");
        assert_eq!(identity.gid, Gid::from_raw(4242));
        assert!(identity.groups.contains(&Gid::from_raw(4242)));
    }

    #[test]
    fn unknown_names_are_errors_naming_the_pool() {
        let bad = config(vec![
            pool(|p| p.user = Some("no-such-user-here".into())),
            pool(|p| {
                p.name = "b".into();
                p.user = Some("nobody".into());
                p.group = Some("no-such-group-here".into());
            }),
            pool(|p| {
                p.name = "c".into();
                p.user = Some("4000000000".into());
            }),
        ]);
        let errors = prepare_as(&bad, true, false).unwrap_err();
        assert_eq!(
            errors,
            [
                "[pool www] cannot get uid for user 'no-such-user-here'",
                "[pool b] cannot get gid for group 'no-such-group-here'",
                "[pool c] user '4000000000' has no entry in the user database, so it has no \
                 primary group: set 'group' as well",
            ]
        );
    }

    #[test]
    fn socket_names_are_checked_too() {
        let socket = ListenAddress::Unix("/run/x.sock".into());
        let mut p = PoolConfig::new("www", socket);
        p.listen_owner = Some("no-such-user-here".into());
        p.listen_group = Some("no-such-group-here".into());
        p.listen_acl_users = Some("root, no-such-user-here".into());
        let errors = prepare_as(&config(vec![p]), false, false).unwrap_err();
        assert_eq!(
            errors,
            [
                "[pool www] listen.owner: cannot get uid for user 'no-such-user-here'",
                "[pool www] listen.group: cannot get gid for group 'no-such-group-here'",
                "[pool www] cannot get uid for user 'no-such-user-here'",
            ]
        );
    }

    #[test]
    fn without_root_the_identity_directives_are_noticed_and_ignored() {
        let p = pool(|p| {
            p.user = Some("no-such-user-here".into());
            p.group = Some("www-data".into());
            p.chroot = Some("/srv/jail".into());
            p.process_priority = Some(5);
            p.rlimit_files = Some(1024);
        });
        let prepared = prepare_as(&config(vec![p]), false, false).expect("ignored, not fatal");
        assert_eq!(
            prepared.notices,
            [
                "[pool www] 'user' directive is ignored when FPM is not running as root",
                "[pool www] 'group' directive is ignored when FPM is not running as root",
                "[pool www] 'chroot' directive is ignored when FPM is not running as root",
                "[pool www] 'process.priority' directive is ignored when FPM is not running as root",
            ]
        );
        let privileges = &prepared.pools[0];
        assert_eq!(privileges.identity, None);
        assert_eq!(privileges.chroot(), None);
        assert_eq!(privileges.priority, None);
        assert_eq!(
            privileges.rlimit_files,
            Some(1024),
            "limits apply to anyone"
        );
    }

    #[test]
    fn the_environment_gets_user_and_home_of_the_pool_user() {
        let mut privileges = Privileges::unchanged("www");
        privileges.identity = Some(Identity {
            uid: Uid::from_raw(33),
            gid: Gid::from_raw(33),
            groups: vec![Gid::from_raw(33)],
            name: Some("www-data".into()),
            home: Some("/var/www".into()),
        });
        let master_env = vec![
            (OsString::from("HOME"), OsString::from("/root")),
            (OsString::from("LANG"), OsString::from("C.UTF-8")),
        ];
        let mut p = pool(|p| p.env = vec![("A".into(), "1".into())]);
        let policy = privileges.env_policy(&p, master_env.clone());
        assert_eq!(
            policy.inherited,
            [
                (OsString::from("USER"), OsString::from("www-data")),
                (OsString::from("HOME"), OsString::from("/var/www")),
            ]
        );
        assert_eq!(policy.pool_env, [("A".to_string(), "1".to_string())]);
        p.clear_env = false;
        let policy = privileges.env_policy(&p, master_env.clone());
        assert_eq!(
            policy.inherited,
            [
                (OsString::from("LANG"), OsString::from("C.UTF-8")),
                (OsString::from("USER"), OsString::from("www-data")),
                (OsString::from("HOME"), OsString::from("/var/www")),
            ]
        );
        let policy = Privileges::unchanged("www").env_policy(&p, master_env.clone());
        assert_eq!(
            policy.inherited, master_env,
            "no user: the master's, untouched"
        );
    }

    #[test]
    fn user_and_home_are_never_empty() {
        let mut privileges = Privileges::unchanged("www");
        // `env[USER] = $USER` and `env[HOME] = $HOME` from a master started without them.
        let p = pool(|p| {
            p.env = vec![
                ("USER".into(), String::new()),
                ("HOME".into(), String::new()),
                ("OTHER".into(), String::new()),
            ];
            p.clear_env = false;
        });
        let master_env = vec![(OsString::from("USER"), OsString::new())];
        let policy = privileges.env_policy(&p, master_env.clone());
        assert!(policy.inherited.is_empty(), "{:?}", policy.inherited);
        assert_eq!(
            policy.pool_env,
            [("OTHER".to_string(), String::new())],
            "only USER and HOME are dropped when empty"
        );
        privileges.identity = Some(Identity {
            uid: Uid::from_raw(33),
            gid: Gid::from_raw(33),
            groups: vec![Gid::from_raw(33)],
            name: Some("www-data".into()),
            home: Some("/var/www".into()),
        });
        let policy = privileges.env_policy(&p, master_env);
        assert_eq!(
            policy.inherited,
            [
                (OsString::from("USER"), OsString::from("www-data")),
                (OsString::from("HOME"), OsString::from("/var/www")),
            ]
        );
        // A value the configuration does give still wins, as in php-fpm.
        let p = pool(|p| p.env = vec![("HOME".into(), "/srv/home".into())]);
        let policy = privileges.env_policy(&p, Vec::new());
        assert_eq!(
            policy.pool_env,
            [("HOME".to_string(), "/srv/home".to_string())]
        );
    }
}
