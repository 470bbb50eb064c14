//! Which names exist, decided without a network call: org, repo, revision and in-repo path
//! validation, following the Hub's own rules. Anything these reject is `ENOENT` at once.
//!
//! The rules are deliberately the Hub's (huggingface_hub's `validate_repo_id`) and git's
//! (`git check-ref-format`), not looser: a name that can never exist on the Hub must never
//! cost a network round trip, and a name that can exist must never be refused. Everything
//! here is ASCII-only matching on bytes, so no input can make it panic or allocate.

/// Longest org or repo name the Hub accepts.
pub const MAX_NAME_LEN: usize = 96;

/// Longest revision we accept: git itself has no limit, but a revision must fit in one path
/// component after `name@`, and Linux refuses components over 255 bytes (`NAME_MAX`).
pub const MAX_REVISION_LEN: usize = 255;

/// Longest in-repo path we present: Linux's `PATH_MAX`, so any path we show can be opened.
pub const MAX_REPO_PATH_LEN: usize = 4096;

/// Longest component of an in-repo path: Linux's `NAME_MAX`.
pub const MAX_COMPONENT_LEN: usize = 255;

/// An org or user name: letters, digits, `-`, `_`, `.`; no `--` or `..`; `-` and `.` neither
/// start nor end it; 1 to 96 characters.
pub fn valid_org(name: &str) -> bool {
    valid_hub_name(name)
}

/// A repo name: same rules as [`valid_org`], and, as the Hub has it, not ending in `.git`
/// (that suffix is the Hub's git remote URL for the repo, so no repo can be named so).
pub fn valid_repo(name: &str) -> bool {
    valid_hub_name(name) && !name.ends_with(".git")
}

/// The rules org and repo names share. Only ASCII is accepted, so byte length is the
/// character count the Hub limits.
fn valid_hub_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    bytes.len() <= MAX_NAME_LEN
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !matches!(first, b'-' | b'.')
        && !matches!(last, b'-' | b'.')
        && !name.contains("--")
        && !name.contains("..")
}

/// Split a repo directory name `name` or `name@rev` into the repo name and the revision.
/// `None` when the repo part or the revision is invalid.
///
/// The split is at the first `@`: a repo name can never contain one, while a git ref can
/// (only `@{` is forbidden), so `name@a@b` is repo `name` at revision `a@b`.
pub fn parse_repo_component(component: &str) -> Option<(&str, Option<&str>)> {
    match component.split_once('@') {
        None => valid_repo(component).then_some((component, None)),
        Some((name, rev)) => (valid_repo(name) && valid_revision(rev)).then_some((name, Some(rev))),
    }
}

/// A branch, tag or commit as it can appear after `@` in one path component.
///
/// That is a git ref name (`git check-ref-format` rules for one component) that also fits in
/// a path component: non-empty, at most [`MAX_REVISION_LEN`] bytes, no `/`, no control
/// characters, none of `~ ^ : ? * [ \` or space, no `@{`, not `@` alone, no `..`, does not
/// start with `-` or `.`, does not end with `.` or `.lock`. Hub PR refs (`refs/pr/1`) contain
/// `/` and so cannot be named here.
pub fn valid_revision(rev: &str) -> bool {
    !rev.is_empty()
        && rev.len() <= MAX_REVISION_LEN
        && !rev.chars().any(|c| {
            c.is_control() || matches!(c, '/' | '~' | '^' | ':' | '?' | '*' | '[' | '\\' | ' ')
        })
        && rev != "@"
        && !rev.contains("@{")
        && !rev.contains("..")
        && !rev.starts_with(['-', '.'])
        && !rev.ends_with('.')
        && !rev.ends_with(".lock")
}

/// A full commit hash: exactly 40 lowercase hex digits.
pub fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A path inside a repo that is safe to present: relative, `/`-separated, no empty, `.` or
/// `..` components, no NUL, at most 4096 bytes, no component over 255 bytes.
///
/// Control characters are refused too (they are legal in git but would break every tool that
/// prints a path); any other UTF-8, spaces included, is kept, as the Hub allows it.
pub fn valid_repo_path(path: &str) -> bool {
    path.len() <= MAX_REPO_PATH_LEN
        && !path.chars().any(char::is_control)
        && path.split('/').all(|component| {
            !component.is_empty()
                && component != "."
                && component != ".."
                && component.len() <= MAX_COMPONENT_LEN
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_real_org_and_repo_names() {
        for org in [
            "Qwen",
            "onnx-community",
            "bartowski",
            "TheBloke",
            "sentence-transformers",
            "unsloth",
            "meta-llama",
            "Xenova",
            "ggml-org",
            "openai-community",
            "mradermacher",
            "google-bert",
            "_underscore_first",
            "a",
            "0",
        ] {
            assert!(valid_org(org), "{org}");
        }
        for repo in [
            "Qwen2.5-0.5B-Instruct",
            "Phi-3.5-mini-instruct-onnx-web",
            "all-MiniLM-L6-v2",
            "Llama-3.2-1B",
            "Llama-2-7B-GGUF",
            "Qwen2.5-7B-Instruct-GGUF",
            "whisper-base",
            "gpt2",
            "DeepSeek-R1-GGUF",
            "bert-base-uncased",
            "a.b_c-d",
            "x_",
            "x.-y",
            "v1.0",
        ] {
            assert!(valid_repo(repo), "{repo}");
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for name in [
            "",
            "-leading",
            "trailing-",
            ".leading",
            "trailing.",
            "double--dash",
            "double..dot",
            "has/slash",
            "has space",
            "has@at",
            "tab\there",
            "nul\0",
            "unicodé",
            "emoji🤗",
            ".",
            "..",
            "-",
            "a%2Fb",
            "a+b",
            "a~b",
        ] {
            assert!(!valid_org(name), "org {name:?}");
            assert!(!valid_repo(name), "repo {name:?}");
        }
    }

    #[test]
    fn repo_names_may_not_end_in_dot_git_but_orgs_may() {
        assert!(!valid_repo("model.git"));
        assert!(valid_org("model.git"));
        assert!(valid_repo("model.github"));
        assert!(valid_repo("git"));
    }

    #[test]
    fn name_length_limit_is_96() {
        let ok = "a".repeat(MAX_NAME_LEN);
        let too_long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(ok.len(), 96);
        assert!(valid_org(&ok));
        assert!(valid_repo(&ok));
        assert!(!valid_org(&too_long));
        assert!(!valid_repo(&too_long));
        assert_eq!(parse_repo_component(&format!("{ok}@main")), Some((ok.as_str(), Some("main"))));
        assert_eq!(parse_repo_component(&format!("{too_long}@main")), None);
    }

    #[test]
    fn parses_repo_components() {
        assert_eq!(
            parse_repo_component("Qwen2.5-0.5B-Instruct"),
            Some(("Qwen2.5-0.5B-Instruct", None))
        );
        assert_eq!(parse_repo_component("gpt2@main"), Some(("gpt2", Some("main"))));
        assert_eq!(parse_repo_component("gpt2@v1.0"), Some(("gpt2", Some("v1.0"))));
        let commit = "607a30d783dfa663caf39e06633721c8d4cfcd7e";
        assert_eq!(parse_repo_component(&format!("gpt2@{commit}")), Some(("gpt2", Some(commit))));
        assert_eq!(parse_repo_component("gpt2@a@b"), Some(("gpt2", Some("a@b"))));
        assert_eq!(parse_repo_component("name@"), None);
        assert_eq!(parse_repo_component("@main"), None);
        assert_eq!(parse_repo_component("@"), None);
        assert_eq!(parse_repo_component(""), None);
        assert_eq!(parse_repo_component("bad--name@main"), None);
        assert_eq!(parse_repo_component("gpt2@.."), None);
        assert_eq!(parse_repo_component("gpt2@main@{1}"), None);
        assert_eq!(parse_repo_component("gpt2@has space"), None);
        assert_eq!(parse_repo_component("model.git@main"), None);
    }

    #[test]
    fn accepts_real_revisions() {
        for rev in [
            "main",
            "v1.0",
            "v2.0.1",
            "release-2024_01",
            "fp16",
            "onnx",
            "607a30d783dfa663caf39e06633721c8d4cfcd7e",
            "a@b",
            "feature.x",
            "_x",
            "naïve",
        ] {
            assert!(valid_revision(rev), "{rev}");
        }
    }

    #[test]
    fn rejects_invalid_revisions() {
        for rev in [
            "",
            ".",
            "..",
            "refs/pr/1",
            "a..b",
            ".hidden",
            "-flag",
            "trailing.",
            "branch.lock",
            "@",
            "a@{1}",
            "a~1",
            "a^2",
            "a:b",
            "a?",
            "a*",
            "a[0]",
            "a\\b",
            "a b",
            "nul\0",
            "tab\t",
            "del\x7f",
            "c1\u{85}",
        ] {
            assert!(!valid_revision(rev), "{rev:?}");
        }
        assert!(valid_revision(&"r".repeat(MAX_REVISION_LEN)));
        assert!(!valid_revision(&"r".repeat(MAX_REVISION_LEN + 1)));
    }

    #[test]
    fn recognises_commits() {
        assert!(is_commit("607a30d783dfa663caf39e06633721c8d4cfcd7e"));
        assert!(is_commit(&"0".repeat(40)));
        assert!(!is_commit("607A30D783DFA663CAF39E06633721C8D4CFCD7E"));
        assert!(!is_commit("607a30d783dfa663caf39e06633721c8d4cfcd7"));
        assert!(!is_commit("607a30d783dfa663caf39e06633721c8d4cfcd7e0"));
        assert!(!is_commit("g07a30d783dfa663caf39e06633721c8d4cfcd7e"));
        assert!(!is_commit("main"));
        assert!(!is_commit(""));
    }

    #[test]
    fn accepts_real_repo_paths() {
        for path in [
            "config.json",
            ".gitattributes",
            "onnx/model_q4f16.onnx",
            "onnx/model_q4f16.onnx_data",
            "Q4_K_M/Kimi-K2-Instruct-Q4_K_M-00001-of-00013.gguf",
            "original/consolidated.00.pth",
            "1_Pooling/config.json",
            "dir with spaces/file name.txt",
            "日本語/モデル.bin",
            "...",
            ".hidden/.file",
            "a\\b",
        ] {
            assert!(valid_repo_path(path), "{path}");
        }
    }

    #[test]
    fn rejects_unsafe_repo_paths() {
        for path in [
            "",
            "/etc/passwd",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "../a",
            "a/../b",
            "a/..",
            ".",
            "..",
            "nul\0byte",
            "new\nline",
            "esc\x1b[0m",
        ] {
            assert!(!valid_repo_path(path), "{path:?}");
        }
    }

    #[test]
    fn repo_path_length_limits() {
        let component = "c".repeat(MAX_COMPONENT_LEN);
        assert!(valid_repo_path(&component));
        assert!(!valid_repo_path(&"c".repeat(MAX_COMPONENT_LEN + 1)));
        // 15 components of 255 bytes, one of 128 and one of 127, and 16 slashes: 4096 bytes.
        let mut parts = vec![component.clone(); 15];
        parts.push("c".repeat(128));
        parts.push("c".repeat(127));
        let exact = parts.join("/");
        assert_eq!(exact.len(), MAX_REPO_PATH_LEN);
        assert!(valid_repo_path(&exact));
        assert!(!valid_repo_path(&format!("{exact}c")), "4097 bytes");
    }

    /// Names built to satisfy the Hub's rules: a word character first, and every `-` or `.`
    /// followed by a word character, so neither doubles nor ends the name.
    fn hub_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_]([A-Za-z0-9_]|[-.][A-Za-z0-9_]){0,47}"
    }

    /// Revisions built to satisfy the git rules we apply.
    fn revision() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_]([A-Za-z0-9_@]|[-.][A-Za-z0-9_]){0,60}"
            .prop_filter("git refuses .lock", |r| !r.ends_with(".lock"))
    }

    proptest! {
        #[test]
        fn generated_names_are_accepted(name in hub_name()) {
            prop_assert!(valid_org(&name));
            prop_assert_eq!(valid_repo(&name), !name.ends_with(".git"));
        }

        #[test]
        fn accepted_names_are_safe(name in any::<String>()) {
            if valid_org(&name) {
                prop_assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.contains('/') && !name.contains("..") && !name.contains('@'));
                prop_assert!(!name.chars().any(char::is_control));
                prop_assert!(name != "." && name != "..");
            }
        }

        #[test]
        fn accepted_names_are_safe_ascii_soup(name in "[-._a-zA-Z0-9/@ ]{0,100}") {
            if valid_repo(&name) {
                prop_assert!(name.len() <= MAX_NAME_LEN);
                prop_assert!(!name.contains('/') && !name.contains("..") && !name.contains("--"));
                prop_assert!(!name.starts_with(['-', '.']) && !name.ends_with(['-', '.']));
            }
        }

        #[test]
        fn generated_revisions_are_accepted(rev in revision()) {
            prop_assert!(valid_revision(&rev));
        }

        #[test]
        fn accepted_revisions_fit_one_component(rev in any::<String>()) {
            if valid_revision(&rev) {
                prop_assert!(!rev.contains('/') && !rev.contains('\0'));
                prop_assert!(rev != "." && rev != "..");
                prop_assert!(!rev.chars().any(char::is_control));
                prop_assert!(rev.len() <= MAX_REVISION_LEN);
            }
        }

        #[test]
        fn name_at_revision_round_trips(name in hub_name(), rev in revision()) {
            prop_assume!(!name.ends_with(".git"));
            let component = format!("{name}@{rev}");
            prop_assert_eq!(
                parse_repo_component(&component),
                Some((name.as_str(), Some(rev.as_str())))
            );
            prop_assert_eq!(parse_repo_component(&name), Some((name.as_str(), None)));
        }

        #[test]
        fn parsed_components_are_valid_and_rebuild_the_input(component in any::<String>()) {
            if let Some((name, rev)) = parse_repo_component(&component) {
                prop_assert!(valid_repo(name));
                match rev {
                    Some(rev) => {
                        prop_assert!(valid_revision(rev));
                        prop_assert_eq!(format!("{name}@{rev}"), component);
                    }
                    None => prop_assert_eq!(name, component.as_str()),
                }
            }
        }

        #[test]
        fn commits_are_lowercase_hex(rev in "[0-9a-f]{40}") {
            prop_assert!(is_commit(&rev));
            prop_assert!(valid_revision(&rev));
            prop_assert_eq!(is_commit(&rev.to_ascii_uppercase()), !rev.bytes().any(|b| b.is_ascii_alphabetic()));
        }

        #[test]
        fn generated_repo_paths_are_accepted(
            components in prop::collection::vec("[^/\\p{Cc}]{1,20}", 1..8)
        ) {
            prop_assume!(components.iter().all(|c| c != "." && c != ".."));
            prop_assert!(valid_repo_path(&components.join("/")));
        }

        #[test]
        fn accepted_repo_paths_are_relative_and_clean(path in any::<String>()) {
            if valid_repo_path(&path) {
                prop_assert!(!path.starts_with('/') && !path.ends_with('/'));
                prop_assert!(!path.contains("//") && !path.contains('\0'));
                prop_assert!(path.len() <= MAX_REPO_PATH_LEN);
                prop_assert!(path.split('/').all(|c| c != "." && c != ".." && c.len() <= MAX_COMPONENT_LEN));
                prop_assert!(!path.chars().any(char::is_control));
            }
        }

        #[test]
        fn accepted_repo_paths_from_path_soup(path in "[./a]{0,12}") {
            let expected = !path.is_empty()
                && path.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            prop_assert_eq!(valid_repo_path(&path), expected);
        }
    }
}
