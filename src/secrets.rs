//! Files that hold secrets (broker passwords in a clients file, DTLS keys): at start and on
//! reload, a file that others than its owner may read is reported, or refused with
//! `[auth] strict`, as ssh does with a private key.

use std::path::Path;

/// What is wrong with the permissions of a secret file, if anything: a sentence naming the
/// file, its mode and the fix.
pub fn exposure(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{} holds secrets but its group or others may read it (mode {mode:03o}); \
                 chmod 600 it",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Checks every file: each exposed one is logged as a warning, or, with `strict`, the first
/// one is the error.
///
/// # Errors
/// With `strict`, the first exposed file's [`exposure`] sentence.
pub fn check<'a>(paths: impl IntoIterator<Item = &'a Path>, strict: bool) -> Result<(), String> {
    for path in paths {
        if let Some(problem) = exposure(path) {
            if strict {
                return Err(format!("{problem} (auth.strict is set)"));
            }
            tracing::warn!("{problem}");
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_file_others_may_read_is_reported_and_refused_when_strict() {
        let dir = std::env::temp_dir().join(format!("mqttsn-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("psk.txt");
        std::fs::write(&file, "dev1:00112233\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let problem = exposure(&file).unwrap();
        assert!(problem.contains("mode 644"), "{problem}");
        assert!(check([file.as_path()], false).is_ok());
        assert!(check([file.as_path()], true)
            .unwrap_err()
            .contains("chmod 600"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure(&file), None);
        assert!(check([file.as_path()], true).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
