//! A real filesystem (btrfs, XFS) on a loop device for the tests of snapshot and reflink
//! guides: a sparse image in a harness directory, `losetup`, `mkfs`, `mount`; Drop unmounts,
//! detaches the device and removes the image, also when the test fails.

use crate::tempdir::{temp_dir, TempDir};
use std::path::PathBuf;
use std::process::Command;

/// A mounted loop filesystem.
pub struct LoopFs {
    dir: TempDir,
    device: Option<String>,
    mounted: bool,
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// Makes and mounts a `fstype` filesystem (`btrfs` or `xfs`) of `mib` MiB (sparse).
    /// `Err` says why it cannot be done here (no root, no loop devices, no mkfs, no kernel
    /// support): callers skip with that message.
    pub fn new(fstype: &str, mib: u64) -> Result<LoopFs, String> {
        if !crate::is_root() {
            return Err("loop devices need root".into());
        }
        let dir = temp_dir(fstype);
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| format!("cannot create {}: {e}", image.display()))?;
        let mut fs = LoopFs {
            dir,
            device: None,
            mounted: false,
        };
        let img = image.display().to_string();
        fs.device = Some(run("losetup", &["--find", "--show", &img])?);
        let dev = fs.device.clone().unwrap_or_default();
        let mkfs = format!("mkfs.{fstype}");
        run(&mkfs, &["-q", &dev]).or_else(|_| run(&mkfs, &["-f", "-q", &dev]))?;
        let mnt = fs.path();
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        run("mount", &["-t", fstype, &dev, &mnt.display().to_string()])?;
        fs.mounted = true;
        Ok(fs)
    }

    /// The mount point (a short name: the unix socket paths of clusters created inside
    /// must fit in 107 bytes).
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("m")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let m = self.path().display().to_string();
            if run("umount", &[&m]).is_err() {
                // Something still holds it (a process the test could not stop): detach it
                // lazily so that the device and the image still go.
                let _ = run("umount", &["-l", &m]);
            }
        }
        if let Some(dev) = &self.device {
            let _ = run("losetup", &["-d", dev]);
        }
    }
}
