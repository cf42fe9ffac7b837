//! Where outputs land, and the rules that keep a run from destroying anything that is not its own.
//!
//! - A run writes under a temporary directory `.NAME.servesim-partial-PID` beside its target and renames
//!   it into place only when the run completed, so a failed run leaves nothing half-written behind.
//! - An existing target is replaced only when it is a servesim output directory: it holds `resolved.toml`
//!   and every entry in it is a file servesim writes ([`OUTPUT_FILES`]) or a folder that is itself such
//!   a directory (a comparison's variants and seeds). Anything else is named in the error and nothing is
//!   touched. The target can never be the working directory or one of its ancestors, nor a symbolic link.
//! - Single files (`workload export`, `calibrate`) are written as `.FILE.servesim-partial-PID` and renamed over
//!   the target only when the target is absent or a regular file.
//! - Every temporary path is registered while it exists, and so is every folder created to hold one;
//!   [`install_signal_cleanup`] removes them on SIGINT, SIGTERM or SIGHUP, then lets the signal end the
//!   process (a shell sees 130, 143 or 129). Temporary paths left by a process that no longer exists
//!   (killed with SIGKILL, a power cut) are removed by the next run that writes beside them; only names
//!   of servesim's own pattern are touched.

use crate::error::OutputError;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Every file name servesim writes into an output directory: a run's six files (its per-request file as CSV or Parquet), a comparison's tables
/// and its plots (SVG or PNG), a capacity search's probes and answer, and either's `report.html`.
pub const OUTPUT_FILES: &[&str] = &[
    "requests.csv",
    "requests.parquet",
    "summary.json",
    "summary.csv",
    "timeseries.csv",
    "replicas.csv",
    "resolved.toml",
    "comparison.csv",
    "comparison_seeds.csv",
    "paired_requests.csv",
    "ttft_cdf.svg",
    "e2e_cdf.svg",
    "kv_usage.svg",
    "queue.svg",
    "prefix_hit_rate.svg",
    "ttft_cdf.png",
    "e2e_cdf.png",
    "kv_usage.png",
    "queue.png",
    "prefix_hit_rate.png",
    "capacity.csv",
    "capacity.json",
    "capacity-part.json",
    "capacity.svg",
    "capacity.png",
    "report.html",
    "profile.toml",
    "validation.csv",
    "validation_requests.csv",
    "validation_summary.json",
    "validation_steps.svg",
    "validation_ttft_error.svg",
];

/// How deep a servesim output tree goes: a comparison holds `seed-S/VARIANT/` folders.
const MAX_OUTPUT_DEPTH: usize = 3;

/// A path to remove if the process is interrupted.
#[derive(Clone, Debug, PartialEq)]
enum Temporary {
    /// A temporary output, removed with everything in it.
    Tree(PathBuf),
    /// A folder created to hold one, removed only if empty (after the trees).
    Folder(PathBuf),
}

/// Temporary paths that exist now and must go if the process is interrupted.
static TEMPORARY: Mutex<Vec<Temporary>> = Mutex::new(Vec::new());

fn temporaries() -> std::sync::MutexGuard<'static, Vec<Temporary>> {
    // A panic while the lock is held cannot leave the list inconsistent (push and retain only).
    TEMPORARY.lock().unwrap_or_else(|e| e.into_inner())
}

fn unregister(t: &Temporary) {
    temporaries().retain(|p| p != t);
}

fn remove_path(path: &Path) {
    // A writer thread may still be creating files inside while this runs; retry a few times.
    for _ in 0..5 {
        let r = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        if r.is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Removes every registered temporary path: trees first, then the folders made for them (deepest first,
/// each only if empty). Run from the signal thread; the process ends right after.
fn remove_temporaries() {
    let list = temporaries();
    for t in list.iter() {
        if let Temporary::Tree(p) = t {
            remove_path(p);
        }
    }
    for t in list.iter() {
        if let Temporary::Folder(p) = t {
            let _ = std::fs::remove_dir(p);
        }
    }
    // The lock stays held until exit, so that no run creates or commits anything meanwhile.
    std::mem::forget(list);
}

/// Installs the handler that removes temporary outputs on SIGINT, SIGTERM or SIGHUP and then lets the
/// signal end the process, so a shell sees 130, 143 or 129 and a loop around servesim stops too. Call
/// once, from the binary (the tests' harness keeps its own signal handling).
pub fn install_signal_cleanup() {
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    remove_temporaries();
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            });
    }
}

/// The temporary name of `name`'s output while process `pid` writes it: servesim's own pattern, which
/// no user file is likely to have and which the stale-temporary cleanup matches exactly.
fn temporary_name(name: &str, what: &str, pid: u32) -> String {
    format!(".{name}.servesim-{what}-{pid}")
}

/// True when process `pid` may still exist (so its temporary output must be left alone).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes the temporaries of `name` in `parent` (`.NAME.servesim-partial-PID`, and with `dirs`
/// `.NAME.servesim-old-PID`) whose process is gone.
fn remove_stale(parent: &Path, name: &str, dirs: bool) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let kinds: &[&str] = if dirs {
        &["partial", "old"]
    } else {
        &["partial"]
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(file) = file.to_str() else { continue };
        // The PID is what follows the last `-`; the whole name must then be exactly ours.
        let Some(pid) = file
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        for what in kinds {
            if file == temporary_name(name, what, pid)
                && pid != std::process::id()
                && !process_alive(pid)
            {
                remove_path(&e.path());
            }
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn refused(path: &Path, reason: impl Into<String>) -> OutputError {
    OutputError::Refused {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The parent directory of `path` and its last component.
fn split(path: &Path) -> Result<(PathBuf, String), OutputError> {
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some(n) => n.to_string(),
        None => {
            return Err(refused(
                path,
                "it does not end in a plain name (it is `.`, `..`, a root or not UTF-8); name the directory itself",
            ))
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// Checks that `dir` may be replaced: a servesim output directory all of whose entries servesim wrote.
/// Returns the first foreign entry's error otherwise.
fn check_replaceable(target: &Path) -> Result<(), OutputError> {
    let meta = std::fs::symlink_metadata(target).map_err(io(target))?;
    if meta.file_type().is_symlink() {
        return Err(refused(
            target,
            "it is a symbolic link; give the directory it points to, or another --out",
        ));
    }
    if !meta.is_dir() {
        return Err(refused(
            target,
            "it exists and is not a directory; choose another --out or remove it",
        ));
    }
    if let (Ok(cwd), Ok(t)) = (std::env::current_dir(), target.canonicalize()) {
        if let Ok(cwd) = cwd.canonicalize() {
            if cwd.starts_with(&t) {
                return Err(refused(
                    target,
                    "it is the working directory or one of its ancestors; give a directory of its own, e.g. --out results/NAME",
                ));
            }
        }
    }
    if !target.join("resolved.toml").is_file() {
        return Err(OutputError::NotARunDir {
            path: target.to_path_buf(),
        });
    }
    check_entries(target, target, 0)
}

fn check_entries(root: &Path, dir: &Path, depth: usize) -> Result<(), OutputError> {
    let foreign = |p: &Path, what: &str| {
        refused(
            root,
            format!(
                "it holds {} ({what}), which servesim did not write; it replaces only its own output \
                 directories. Move that away or choose another --out",
                p.display()
            ),
        )
    };
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let p = e.path();
        let ty = e.file_type().map_err(io(&p))?;
        let name = e.file_name();
        let known = name.to_str().is_some_and(|n| OUTPUT_FILES.contains(&n));
        if ty.is_file() && known {
            continue;
        }
        if ty.is_dir() && depth + 1 < MAX_OUTPUT_DEPTH {
            let is_stale_tmp = name.to_str().is_some_and(|n| n.starts_with('.'));
            if is_stale_tmp {
                return Err(foreign(&p, "a hidden folder"));
            }
            check_entries(root, &p, depth + 1)?;
            continue;
        }
        let what = if ty.is_symlink() {
            "a symbolic link"
        } else if ty.is_dir() {
            "a folder deeper than servesim writes"
        } else if ty.is_file() {
            "a file of another name"
        } else {
            "not a regular file"
        };
        return Err(foreign(&p, what));
    }
    Ok(())
}

/// A run's output directory while it is being written.
pub struct RunDir {
    final_path: PathBuf,
    tmp: PathBuf,
    /// Folders created to hold the output (outermost first), removed again if the run fails.
    made: Vec<PathBuf>,
    committed: bool,
}

/// Creates `dir` and any missing folders above it; returns those it created, outermost first.
fn create_folders(dir: &Path) -> Result<Vec<PathBuf>, OutputError> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(p) = d.filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        missing.push(p.to_path_buf());
        d = p.parent();
    }
    missing.reverse();
    for (i, p) in missing.iter().enumerate() {
        if let Err(e) = std::fs::create_dir(p) {
            if !p.is_dir() {
                remove_folders(&missing[..i]);
                return Err(io(p)(e));
            }
        }
    }
    Ok(missing)
}

/// Removes folders `create_folders` made, innermost first, each only if empty.
fn remove_folders(made: &[PathBuf]) {
    for p in made.iter().rev() {
        let _ = std::fs::remove_dir(p);
    }
}

impl RunDir {
    /// Checks that `final_path` may be written (see the module docs), removes stale temporary directories
    /// beside it, and creates the temporary directory. Refusals come back as [`OutputError::Refused`] or
    /// [`OutputError::NotARunDir`] (exit code 2) before anything is touched.
    pub fn create(final_path: &Path) -> Result<RunDir, OutputError> {
        let (parent, name) = split(final_path)?;
        if std::fs::symlink_metadata(final_path).is_ok() {
            check_replaceable(final_path)?;
        }
        // Held while anything is created, so an interrupt sees either nothing or all of it registered.
        let mut list = temporaries();
        let made = create_folders(&parent)?;
        list.extend(made.iter().rev().cloned().map(Temporary::Folder));
        remove_stale(&parent, &name, true);
        let tmp = parent.join(temporary_name(&name, "partial", std::process::id()));
        if tmp.exists() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        if let Err(e) = std::fs::create_dir(&tmp) {
            list.retain(|t| !matches!(t, Temporary::Folder(p) if made.contains(p)));
            drop(list);
            remove_folders(&made);
            return Err(io(&tmp)(e));
        }
        list.push(Temporary::Tree(tmp.clone()));
        Ok(RunDir {
            final_path: final_path.to_path_buf(),
            tmp,
            made,
            committed: false,
        })
    }

    /// Where to write `file` before the commit.
    pub fn file(&self, file: &str) -> PathBuf {
        self.tmp.join(file)
    }

    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Moves the finished outputs into place, replacing an earlier servesim output of the same name (checked
    /// again here: the run may have lasted long enough for someone to put a file into it).
    pub fn commit(mut self) -> Result<PathBuf, OutputError> {
        let exists = std::fs::symlink_metadata(&self.final_path).is_ok();
        let (parent, name) = split(&self.final_path)?;
        if exists {
            if let Err(e) = check_replaceable(&self.final_path) {
                // The run is done: keep its outputs where the user can find them.
                let kept = parent.join(format!("{name}.servesim-new-{}", std::process::id()));
                return Err(match std::fs::rename(&self.tmp, &kept) {
                    Ok(()) => {
                        self.committed = true;
                        unregister(&Temporary::Tree(self.tmp.clone()));
                        refused(
                            &self.final_path,
                            format!("{e}; this run's outputs are kept in {}", kept.display()),
                        )
                    }
                    Err(_) => e,
                });
            }
        }
        // Held across the renames: an interrupt cannot remove the new outputs half-way into place.
        let mut list = temporaries();
        let old = parent.join(temporary_name(&name, "old", std::process::id()));
        if exists {
            list.push(Temporary::Tree(old.clone()));
            std::fs::rename(&self.final_path, &old).map_err(io(&self.final_path))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.final_path) {
            if exists {
                let _ = std::fs::rename(&old, &self.final_path);
            }
            list.retain(|p| p != &Temporary::Tree(old.clone()));
            return Err(io(&self.final_path)(e));
        }
        let made: Vec<Temporary> = self.made.iter().cloned().map(Temporary::Folder).collect();
        list.retain(|p| p != &Temporary::Tree(self.tmp.clone()) && !made.contains(p));
        drop(list);
        self.committed = true;
        if exists {
            let removed = std::fs::remove_dir_all(&old);
            unregister(&Temporary::Tree(old.clone()));
            removed.map_err(io(&old))?;
        }
        Ok(self.final_path.clone())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
            let made: Vec<Temporary> = self.made.iter().cloned().map(Temporary::Folder).collect();
            temporaries().retain(|p| p != &Temporary::Tree(self.tmp.clone()) && !made.contains(p));
            remove_folders(&self.made);
        }
    }
}

/// Checks that `target` may be written as a file (absent or a regular file); returns its parent and name.
/// Commands that work long before writing call it first, so a refusal costs nothing.
pub fn check_file_target(target: &Path) -> Result<(PathBuf, String), OutputError> {
    let (parent, name) = split(target)?;
    if let Ok(meta) = std::fs::metadata(target) {
        if !meta.is_file() {
            return Err(refused(
                target,
                "it exists and is not a regular file (a device, pipe or directory); give a file path, or - for standard output where offered",
            ));
        }
    }
    Ok((parent, name))
}

/// Writes one output file atomically: `write` fills a temporary file beside `target`, which is then
/// renamed over it. `target` must be absent or a regular file (never a device, a FIFO or a directory);
/// nothing is left behind on failure or interrupt.
pub fn write_file_atomically(
    target: &Path,
    write: impl FnOnce(&Path) -> Result<(), OutputError>,
) -> Result<(), OutputError> {
    let (parent, name) = check_file_target(target)?;
    remove_stale(&parent, &name, false);
    let tmp = parent.join(temporary_name(&name, "partial", std::process::id()));
    let t = Temporary::Tree(tmp.clone());
    temporaries().push(t.clone());
    let done = write(&tmp).and_then(|()| std::fs::rename(&tmp, target).map_err(io(target)));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    unregister(&t);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_directory_with_a_foreign_file_is_refused_and_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("resolved.toml"), "").unwrap();
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = RunDir::create(&d).err().unwrap();
        assert!(matches!(e, OutputError::Refused { .. }));
        assert!(e.to_string().contains("notes.txt"), "{e}");
        assert_eq!(files(&d), ["notes.txt", "resolved.toml"]);
        assert_eq!(files(tmp.path()), ["run"]);
    }

    #[test]
    fn links_deep_folders_and_hidden_folders_are_foreign() {
        let tmp = tempfile::tempdir().unwrap();
        let run = |setup: &dyn Fn(&Path)| {
            let d = tmp.path().join("run");
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("resolved.toml"), "").unwrap();
            setup(&d);
            RunDir::create(&d).err().map(|e| e.to_string())
        };
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let e = run(&|d| std::os::unix::fs::symlink(&outside, d.join("requests.csv")).unwrap());
        assert!(e.unwrap().contains("a symbolic link"));
        let e = run(&|d| std::fs::create_dir_all(d.join("seed-1/a/b")).unwrap());
        assert!(e.unwrap().contains("deeper than servesim writes"));
        let e = run(&|d| std::fs::create_dir(d.join(".git")).unwrap());
        assert!(e.unwrap().contains("a hidden folder"));
        assert!(run(&|d| std::fs::create_dir_all(d.join("seed-1/a")).unwrap()).is_none());
        // The target itself a link to a run directory: refused, the link and its target kept.
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(tmp.path().join("run"), &link).unwrap();
        let e = RunDir::create(&link).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(tmp.path().join("run/resolved.toml").exists());
    }

    #[test]
    fn a_target_changed_during_the_run_keeps_the_new_outputs_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("run");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("resolved.toml"), "old").unwrap();
        let r = RunDir::create(&d).unwrap();
        std::fs::write(r.file("resolved.toml"), "new").unwrap();
        // Someone adds a file of their own while the run goes on.
        std::fs::write(d.join("notes.txt"), "mine").unwrap();
        let e = r.commit().unwrap_err().to_string();
        let kept = format!("run.servesim-new-{}", std::process::id());
        assert!(e.contains("notes.txt") && e.contains(&kept), "{e}");
        assert_eq!(files(&d), ["notes.txt", "resolved.toml"]);
        assert_eq!(
            std::fs::read_to_string(d.join("resolved.toml")).unwrap(),
            "old"
        );
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(&kept).join("resolved.toml")).unwrap(),
            "new"
        );
    }

    #[test]
    fn folders_made_for_a_failed_run_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let r = RunDir::create(&tmp.path().join("a/b/run")).unwrap();
        assert!(tmp.path().join("a/b").is_dir());
        drop(r);
        assert!(files(tmp.path()).is_empty(), "{:?}", files(tmp.path()));
        // Kept once the run commits.
        let r = RunDir::create(&tmp.path().join("a/b/run")).unwrap();
        r.commit().unwrap();
        assert!(tmp.path().join("a/b/run").is_dir());
        // Nothing of this run is left registered (other tests' entries may be, meanwhile).
        assert!(!temporaries().iter().any(|t| match t {
            Temporary::Tree(p) | Temporary::Folder(p) => p.starts_with(tmp.path()),
        }));
    }

    #[test]
    fn a_servesim_directory_is_replaced_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("cmp");
        std::fs::create_dir_all(d.join("seed-1/a")).unwrap();
        std::fs::write(d.join("resolved.toml"), "").unwrap();
        std::fs::write(d.join("seed-1/a/requests.csv"), "").unwrap();
        let r = RunDir::create(&d).unwrap();
        std::fs::write(r.file("resolved.toml"), "new").unwrap();
        r.commit().unwrap();
        assert_eq!(files(&d), ["resolved.toml"]);
        assert_eq!(files(tmp.path()), ["cmp"]);
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_live_ones_kept() {
        let tmp = tempfile::tempdir().unwrap();
        // PID 4194304 is above Linux's largest (pid_max is at most 2^22), so no process has it.
        let dead = tmp.path().join(".x.servesim-partial-4194304");
        let old = tmp.path().join(".x.servesim-old-4194304");
        let other = tmp.path().join(".y.servesim-partial-4194304");
        // A user's own hidden backups that merely look alike are never touched.
        let users = tmp.path().join(".x.old-20240501");
        let users2 = tmp.path().join(".x.servesim-partial-4194304x");
        std::fs::create_dir(&users).unwrap();
        std::fs::create_dir(&users2).unwrap();
        for p in [&dead, &old, &other] {
            std::fs::create_dir(p).unwrap();
        }
        // The parent process (the test harness' launcher) is alive.
        let parent_live = tmp.path().join(format!(
            ".x.servesim-partial-{}",
            std::os::unix::process::parent_id()
        ));
        std::fs::create_dir(&parent_live).unwrap();
        let r = RunDir::create(&tmp.path().join("x")).unwrap();
        assert!(!dead.exists() && !old.exists());
        assert!(users.exists() && users2.exists());
        assert!(
            other.exists(),
            "another name's temporary is not ours to judge"
        );
        assert!(parent_live.exists(), "a live process's temporary is kept");
        let own = r.file("");
        assert!(own.is_dir());
        drop(r);
        assert!(
            !own.exists(),
            "an uncommitted run removes its temporary directory"
        );
    }

    #[test]
    fn write_file_atomically_refuses_non_regular_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let e = write_file_atomically(tmp.path(), |_| Ok(())).unwrap_err();
        assert!(matches!(e, OutputError::Refused { .. }), "{e}");
        let e = write_file_atomically(Path::new("/dev/null"), |_| Ok(())).unwrap_err();
        assert!(matches!(e, OutputError::Refused { .. }), "{e}");
        let f = tmp.path().join("t.csv");
        write_file_atomically(&f, |p| {
            std::fs::write(p, "a").map_err(|source| OutputError::Io {
                path: p.into(),
                source,
            })
        })
        .unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a");
        assert_eq!(files(tmp.path()), ["t.csv"]);
    }
}
