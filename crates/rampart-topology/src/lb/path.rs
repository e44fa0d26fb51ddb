//! Request paths in normal form, so that a route that guards a path (`allow` on
//! `[[listener.route]]`) cannot be walked around by writing the same path another way.
//!
//! The normal form (HAProxy's `http-request normalize-uri` with `path-merge-slashes`,
//! `path-strip-dotdot`, `percent-decode-unreserved strict` and `percent-to-uppercase`;
//! RFC 3986 section 6.2.2): percent-encoded unreserved characters decoded (`%61dmin` is
//! `admin`, `%2e%2e` is `..`), other escapes with uppercase hex digits (`%2f` is `%2F`:
//! an encoded `/` stays encoded, it is data, not a separator), runs of `/` merged into
//! one, and the dot segments removed (`/a/./b/../c` is `/a/c`; `..` never climbs above
//! the root). The query is kept as it came. A `%` not followed by two hex digits, or a `\`
//! (which some servers read as `/`), makes the target invalid (the request gets a 400): a
//! server could read it another way than the routes did. Paths stay case-sensitive, as
//! HAProxy's `path_beg`: a server that ignores case serves `/ADMIN/` as `/admin/`.
//!
//! The balancer forwards the normalized target, so the server sees the path the routes
//! matched, never one that only the server would resolve to a guarded place.

/// Why a path has no normal form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a \"%\" without two hex digits, or a \"\\\", in the path")]
pub struct BadPath;

/// The normal form of `target` (an origin-form request target: a path starting with `/`,
/// then perhaps `?` and a query), appended to `out`. `Err` for a malformed escape or a `\\`.
/// `Ok(false)` when `target` is already in normal form (`out` then holds a copy of it).
pub fn normalize_target(target: &[u8], out: &mut Vec<u8>) -> Result<bool, BadPath> {
    if target.first() != Some(&b'/') {
        // Not origin form (`OPTIONS *`): no path to normalize.
        out.extend_from_slice(target);
        return Ok(false);
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(i) => target.split_at(i),
        None => (target, &b""[..]),
    };
    let start = out.len();
    // Decode what needs no escape, then split on `/` and stack the segments: a `..` pops,
    // a `.` or an empty segment (a doubled `/`) is dropped; the last segment keeps a
    // trailing `/` when the path ended in one or in a dot segment.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let (Some(&h), Some(&l)) = (path.get(i + 1), path.get(i + 2)) else {
                return Err(BadPath);
            };
            let (Some(hv), Some(lv)) = (hex(h), hex(l)) else {
                return Err(BadPath);
            };
            let c = hv << 4 | lv;
            if unreserved(c) {
                decoded.push(c);
            } else {
                decoded.extend_from_slice(&[b'%', h.to_ascii_uppercase(), l.to_ascii_uppercase()]);
            }
            i += 3;
        } else if b == b'\\' {
            return Err(BadPath);
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing = false;
        match seg {
            b"" => trailing = true,
            b"." => trailing = true,
            b".." => {
                segments.pop();
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing || segments.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(query);
    Ok(out[start..] != *target)
}

/// `path` (no query) is in normal form.
pub fn is_normal_path(path: &str) -> bool {
    let mut out = Vec::new();
    matches!(normalize_target(path.as_bytes(), &mut out), Ok(false)) && !path.contains('?')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986's unreserved characters: escaping them changes nothing.
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(t: &str) -> Result<String, BadPath> {
        let mut out = Vec::new();
        normalize_target(t.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).expect("ascii in, ascii out"))
    }

    #[test]
    fn the_ways_to_write_admin_all_come_out_as_admin() {
        for t in [
            "/admin",
            "//admin",
            "///admin",
            "/%61dmin",
            "/%61%64%6D%69%6e",
            "/./admin",
            "/x/../admin",
            "/x/%2e%2e/admin",
            "/x/%2E./admin",
            "/../admin",
            "/../../admin",
            "/x//..//admin",
        ] {
            assert_eq!(norm(t).as_deref(), Ok("/admin"), "{t}");
        }
    }

    #[test]
    fn trailing_slashes_dot_segments_and_queries() {
        for (t, want) in [
            ("/", "/"),
            ("//", "/"),
            ("/a/", "/a/"),
            ("/a//", "/a/"),
            ("/a/.", "/a/"),
            ("/a/..", "/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/a/./b", "/a/b"),
            ("/a?x=/../y&%61", "/a?x=/../y&%61"),
            ("//a/../b?q", "/b?q"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/%7euser", "/~user"),
            ("/%20x", "/%20x"),
            ("/.hidden", "/.hidden"),
            ("/...", "/..."),
            ("*", "*"),
        ] {
            assert_eq!(norm(t).as_deref(), Ok(want), "{t}");
        }
    }

    #[test]
    fn a_broken_escape_is_refused() {
        for t in [
            "/a%",
            "/a%2",
            "/a%zz",
            "/%g1",
            "/a%2?x",
            "/\\admin",
            "/a\\..\\admin",
        ] {
            assert_eq!(norm(t), Err(BadPath), "{t}");
        }
        // In the query it is the server's business.
        assert_eq!(norm("/a?%zz").as_deref(), Ok("/a?%zz"));
    }

    #[test]
    fn normal_paths_are_told_apart() {
        assert!(is_normal_path("/admin/"));
        assert!(is_normal_path("/"));
        assert!(!is_normal_path("/a//b"));
        assert!(!is_normal_path("/a/./b"));
        assert!(!is_normal_path("/%61"));
        assert!(!is_normal_path("/a%2f"));
        assert!(!is_normal_path("/a?b"));
    }

    fn target() -> impl Strategy<Value = String> {
        let seg = prop_oneof![
            Just("".to_string()),
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E%2e".to_string()),
            Just("%2f".to_string()),
            Just("%61".to_string()),
            "[a-z.~_-]{1,3}",
        ];
        (
            prop::collection::vec(seg, 0..8),
            prop::option::of("[a-z=&/.%]{0,6}"),
        )
            .prop_map(|(segs, q)| {
                let mut t = String::new();
                for s in segs {
                    t.push('/');
                    t.push_str(&s);
                }
                if t.is_empty() {
                    t.push('/');
                }
                if let Some(q) = q {
                    t.push('?');
                    t.push_str(&q);
                }
                t
            })
    }

    proptest! {
        /// Normalizing twice changes nothing more; the result starts with one `/`, holds
        /// no dot segment, no doubled `/` and no escaped unreserved character; the query
        /// is untouched.
        #[test]
        fn normal_form_is_a_fixed_point(t in target()) {
            let Ok(once) = norm(&t) else { return Ok(()) };
            let twice = norm(&once);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
            let (path, query) = once.split_at(once.find('?').unwrap_or(once.len()));
            prop_assert!(path.starts_with('/'));
            prop_assert!(!path.contains("//"), "{}", once);
            for seg in path.split('/') {
                prop_assert!(seg != "." && seg != "..", "{}", once);
            }
            prop_assert!(!path.to_ascii_lowercase().contains("%2e"), "{}", once);
            prop_assert!(!path.contains("%61"), "{}", once);
            prop_assert_eq!(query, &t[t.find('?').unwrap_or(t.len())..]);
        }

        /// A target already in normal form is reported unchanged, and only then.
        #[test]
        fn changed_means_different(t in target()) {
            let mut out = Vec::new();
            if let Ok(changed) = normalize_target(t.as_bytes(), &mut out) {
                prop_assert_eq!(changed, out != t.as_bytes());
            }
        }
    }
}
