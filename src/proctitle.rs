//! Process titles, as `ps`, `top` and `pgrep -f` show them: `cgi-fpm: master process
//! (/etc/cgi-fpm.conf)` and `cgi-fpm: pool www`, like php-fpm's.
//!
//! Linux shows a process's command line from the memory its arguments were passed in, so
//! the title is written there, as php-fpm and nginx do. The arguments alone are often too
//! short for a title; the environment strings follow them in the same block, so they are
//! copied elsewhere first (`environ` is pointed at the copies, and every reader of the
//! environment goes through it) and the whole block becomes room for the title. Nothing
//! is ever written past the block's end: a longer title is cut.
//!
//! The original arguments must be saved before the first title is set (std reads them from
//! this same memory): a reload re-executes with them (`main`'s `Reexec`).

use std::ffi::CStr;
use std::sync::OnceLock;

/// The block the kernel reads the command line from: its first byte and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Area {
    start: usize,
    len: usize,
}

static AREA: OnceLock<Option<Area>> = OnceLock::new();

/// The addresses of the argument and environment strings, from `/proc/self/stat`
/// (fields 48-51: arg_start, arg_end, env_start, env_end).
fn bounds(stat: &str) -> Option<[usize; 4]> {
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // `after_name` starts at field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<usize>().ok();
    Some([field(48)?, field(49)?, field(50)?, field(51)?])
}

/// The room for a title: the arguments, and the environment strings too when they follow
/// them directly (they always do for a process started by execve).
fn area(bounds: [usize; 4]) -> Option<Area> {
    let [arg_start, arg_end, env_start, env_end] = bounds;
    if arg_start == 0 || arg_end <= arg_start {
        return None;
    }
    let end = if env_start == arg_end && env_end >= env_start {
        env_end
    } else {
        arg_end
    };
    Some(Area {
        start: arg_start,
        len: end - arg_start,
    })
}

/// `title` cut to fit `room` bytes with its terminating NUL, not inside a UTF-8 sequence.
fn fitted(title: &str, room: usize) -> &str {
    let mut end = title.len().min(room.saturating_sub(1));
    while !title.is_char_boundary(end) {
        end -= 1;
    }
    &title[..end]
}

/// Find the block and move the environment strings out of it. Call once, early, while the
/// process has one thread (it rewrites `environ`'s entries), after the original arguments
/// are saved. Without it (or if the block cannot be found) [`set`] does nothing.
pub fn init() {
    AREA.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let area = area(bounds(&stat)?)?;
        relocate_environment(area);
        Some(area)
    });
}

/// Point every `environ` entry that lies in `area` at a copy of its string. The copies are
/// leaked on purpose: the environment holds them for the life of the process.
fn relocate_environment(area: Area) {
    let inside = |p: usize| p >= area.start && p < area.start + area.len;
    // SAFETY: the process is single-threaded here (see `init`), so nothing reads or
    // changes the environment meanwhile. `environ` is a NULL-terminated array of pointers
    // to NUL-terminated strings; each entry is read, then replaced by a pointer to a copy
    // that lives for the rest of the process.
    unsafe {
        let mut entry = nix::libc::environ;
        if entry.is_null() {
            return;
        }
        while !(*entry).is_null() {
            if inside(*entry as usize) {
                let copy = CStr::from_ptr(*entry).to_owned();
                *entry = copy.into_raw();
            }
            entry = entry.add(1);
        }
    }
}

/// Show `title` as this process's command line (cut to the room there is).
pub fn set(title: &str) {
    let Some(Some(area)) = AREA.get() else {
        return;
    };
    let title = fitted(title, area.len);
    // SAFETY: `area` is this process's argument and environment block, found by `init`
    // from the kernel's own bounds. Nothing in this process refers to it any more: the
    // environment was moved out by `init`, and the arguments were saved before it ran.
    // Writes stay within `area.len` bytes: the title is cut to `len - 1` bytes, and the
    // rest of the block (the NUL after the title included) is zeroed.
    unsafe {
        let start = area.start as *mut u8;
        std::ptr::copy_nonoverlapping(title.as_ptr(), start, title.len());
        std::ptr::write_bytes(start.add(title.len()), 0, area.len - title.len());
    }
}

/// The master's title, php-fpm's with our name (or `proctitle_prefix`).
pub fn master(prefix: Option<&str>, config: &std::path::Path) -> String {
    format!(
        "{}: master process ({})",
        prefix.unwrap_or("cgi-fpm"),
        config.display()
    )
}

/// A worker's title. The status worker of `pm.status_listen` is named apart, so that
/// counting a pool's workers by title (`pgrep -f 'pool www'`) counts only those.
pub fn worker(prefix: Option<&str>, pool: &str, status_only: bool) -> String {
    let prefix = prefix.unwrap_or("cgi-fpm");
    if status_only {
        format!("{prefix}: status worker ({pool})")
    } else {
        format!("{prefix}: pool {pool}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_come_from_fields_48_to_51_even_with_odd_command_names() {
        // Fields 3..=47 as filler, then the four bounds, then field 52.
        let filler: Vec<String> = (3..=47).map(|n| n.to_string()).collect();
        let stat = format!("123 (cgi ) fpm) {} 1000 1040 1040 2000 0", filler.join(" "));
        assert_eq!(bounds(&stat), Some([1000, 1040, 1040, 2000]));
        assert_eq!(bounds("123 (x) S 1 2"), None);
        assert_eq!(bounds("no parenthesis"), None);
    }

    #[test]
    fn the_area_spans_the_environment_only_when_it_follows_the_arguments() {
        assert_eq!(
            area([1000, 1040, 1040, 2000]),
            Some(Area {
                start: 1000,
                len: 1000
            })
        );
        assert_eq!(
            area([1000, 1040, 1100, 2000]),
            Some(Area {
                start: 1000,
                len: 40
            })
        );
        assert_eq!(area([0, 0, 0, 0]), None);
        assert_eq!(area([1000, 1000, 1000, 2000]), None);
    }

    #[test]
    fn a_title_is_cut_to_the_room_with_its_nul_and_whole_characters() {
        assert_eq!(fitted("cgi-fpm: pool www", 100), "cgi-fpm: pool www");
        assert_eq!(fitted("cgi-fpm: pool www", 8), "cgi-fpm");
        assert_eq!(fitted("pool é", 7), "pool ", "é is two bytes: not split");
        assert_eq!(fitted("anything", 0), "");
        assert_eq!(fitted("anything", 1), "");
    }

    #[test]
    fn titles_read_like_php_fpms() {
        let conf = std::path::Path::new("/etc/cgi-fpm.conf");
        assert_eq!(
            master(None, conf),
            "cgi-fpm: master process (/etc/cgi-fpm.conf)"
        );
        assert_eq!(
            master(Some("web1"), conf),
            "web1: master process (/etc/cgi-fpm.conf)"
        );
        assert_eq!(worker(None, "www", false), "cgi-fpm: pool www");
        assert_eq!(worker(Some("web1"), "www", false), "web1: pool www");
        assert_eq!(worker(None, "www", true), "cgi-fpm: status worker (www)");
    }
}
