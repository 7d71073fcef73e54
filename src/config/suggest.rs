//! "did you mean …?" for a mistyped key or enumerated value: the known word nearest by edit
//! distance, when it is near enough to be the likely intent. php-fpm only says "unknown
//! entry"; naming the fix costs one line.

/// The candidate closest to `word` (ignoring ASCII case), if it is within a few edits.
///
/// The allowance grows with the length of the word: one edit for short words, up to three
/// for long dotted keys such as `request_terminate_timeout`. A candidate that would need
/// as many edits as it has letters is never "near" (`x` is not a typo of `pm`). On a tie
/// the earlier candidate wins, so callers list the likelier names first.
pub(super) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let distance = edit_distance(&word, &candidate.to_ascii_lowercase());
        if distance == 0 {
            // Same word in another case: the caller rejected it for another reason.
            continue;
        }
        let allowed = (candidate.chars().count() / 4).clamp(1, 3);
        let near = distance <= allowed && distance < candidate.chars().count();
        if near && best.is_none_or(|(best_distance, _)| distance < best_distance) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

/// `; did you mean 'NAME'?` for an error message, or nothing when no candidate is near.
pub(super) fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(word, candidates)
        .map(|name| format!("; did you mean '{name}'?"))
        .unwrap_or_default()
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbours each cost one edit (`pm.max_chidlren` is one swap away, not two edits).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows suffice: the swap looks two rows back.
    let mut before_previous: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut cost = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cost = cost.min(before_previous[j - 2] + 1);
            }
            current[j] = cost;
        }
        std::mem::swap(&mut before_previous, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_insertions_deletions_substitutions_and_swaps() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("pm.max_chidren", "pm.max_children"), 1);
        assert_eq!(edit_distance("pm.max_chidlren", "pm.max_children"), 1);
        assert_eq!(edit_distance("dynamc", "dynamic"), 1);
        assert_eq!(edit_distance("statik", "static"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ca", "abc"), 3);
    }

    #[test]
    fn the_nearest_known_word_is_suggested() {
        let keys = ["pm", "pm.max_children", "pm.start_servers", "listen"];
        assert_eq!(closest("pm.max_chidren", keys), Some("pm.max_children"));
        assert_eq!(closest("PM.MAX_CHILDERN", keys), Some("pm.max_children"));
        assert_eq!(closest("lisen", keys), Some("listen"));
        assert_eq!(closest("pm.start_server", keys), Some("pm.start_servers"));
    }

    #[test]
    fn far_words_get_no_suggestion() {
        let keys = ["pm", "listen", "user", "group"];
        assert_eq!(closest("no.such.key", keys), None);
        assert_eq!(
            closest("x", keys),
            None,
            "two letters replaced is no typo of pm"
        );
        assert_eq!(closest("usr", keys), Some("user"));
        assert_eq!(closest("gruop", keys), Some("group"));
        assert_eq!(closest("listening_address", keys), None);
        assert_eq!(closest("anything", []), None);
    }

    #[test]
    fn the_same_word_is_never_suggested_and_ties_keep_the_first() {
        assert_eq!(closest("Listen", ["listen"]), None);
        assert_eq!(closest("lag", ["log", "lug"]), Some("log"));
        assert_eq!(closest("lag", ["lug", "log"]), Some("lug"));
    }

    #[test]
    fn the_hint_reads_as_a_clause() {
        assert_eq!(
            hint("dynamc", ["static", "dynamic", "ondemand"]),
            "; did you mean 'dynamic'?"
        );
        assert_eq!(hint("zzz", ["static", "dynamic", "ondemand"]), "");
    }
}
