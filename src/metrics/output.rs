//! The run directory: outputs are written under a temporary name and renamed into place only when the run
//! completed, so a failed run leaves nothing half-written behind.

use crate::error::OutputError;
use std::path::{Path, PathBuf};

pub struct RunDir {
    final_path: PathBuf,
    tmp: PathBuf,
    committed: bool,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl RunDir {
    /// Prepares a temporary directory beside `final_path`.
    pub fn create(final_path: &Path) -> Result<RunDir, OutputError> {
        if final_path.exists() && !final_path.join("resolved.toml").is_file() {
            return Err(OutputError::NotARunDir {
                path: final_path.to_path_buf(),
            });
        }
        let parent = match final_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "run".into());
        let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        Ok(RunDir {
            final_path: final_path.to_path_buf(),
            tmp,
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

    /// Moves the finished outputs into place, replacing an earlier run of the same name.
    pub fn commit(mut self) -> Result<PathBuf, OutputError> {
        if self.final_path.exists() {
            std::fs::remove_dir_all(&self.final_path).map_err(io(&self.final_path))?;
        }
        std::fs::rename(&self.tmp, &self.final_path).map_err(io(&self.final_path))?;
        self.committed = true;
        Ok(self.final_path.clone())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
