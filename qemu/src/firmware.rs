//! The host's UEFI firmware (Debian's `ovmf` package).

use crate::Pflash;
use std::path::{Path, PathBuf};

/// OVMF code/vars pairs to look for, best first (Debian 12 ships the 4 MiB build).
pub const OVMF_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

/// Where OVMF lives on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars_template: PathBuf,
}

impl Firmware {
    /// The first OVMF installation found, if any.
    pub fn find_ovmf() -> Option<Firmware> {
        OVMF_CANDIDATES.iter().find_map(|(code, vars)| {
            let (code, vars) = (Path::new(code), Path::new(vars));
            (code.is_file() && vars.is_file()).then(|| Firmware {
                code: code.to_path_buf(),
                vars_template: vars.to_path_buf(),
            })
        })
    }

    /// Firmware for one VM: the variable store is copied to `vars_copy` (OVMF writes to it).
    pub fn pflash(&self, vars_copy: &Path) -> std::io::Result<Pflash> {
        if let Some(dir) = vars_copy.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&self.vars_template, vars_copy)?;
        Ok(Pflash {
            code: self.code.clone(),
            vars: vars_copy.to_path_buf(),
        })
    }
}
