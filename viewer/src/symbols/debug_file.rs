//! A module's separate debug file: distributions strip their binaries and ship the DWARF data
//! and full symbol table apart (Debian's `libc6-dbg` and `*-dbgsym` packages), under
//! `/usr/lib/debug`. Found as GDB finds it: by the module's build id
//! (`/usr/lib/debug/.build-id/93/ac61….debug`), else by the name in its `.gnu_debuglink`
//! section, next to the module, in a `.debug` folder beside it, or under `/usr/lib/debug` and
//! the module's folder, with the link's CRC checked. Without it, a frame in Debian's libc read
//! `libc.so.6+0x38896`; with it, the function, its file and line.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ReadCache, ReadRef};

/// Where distributions install separate debug files.
pub const DEBUG_ROOT: &str = "/usr/lib/debug";

/// The ELF file at `path`, read as its parser asks (its headers and notes, not its whole
/// contents: a debug file may be hundreds of megabytes).
pub fn open(path: &Path) -> std::io::Result<ReadCache<File>> {
    File::open(path).map(ReadCache::new)
}

/// The separate debug file of `file`, the ELF file at `path`, under the debug root `root` (see
/// the module docs); `None` if none is installed.
#[must_use]
pub fn find<'d, R: ReadRef<'d>>(
    path: &Path,
    file: &object::File<'d, R>,
    root: &Path,
) -> Option<PathBuf> {
    if let Some(id) = build_id(file)
        && let Some(found) = by_build_id(&id, root)
    {
        return Some(found);
    }
    let (name, crc) = file.gnu_debuglink().ok().flatten()?;
    let name = Path::new(std::str::from_utf8(name).ok()?);
    let dir = path.parent()?;
    let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
    if let Ok(rel) = dir.strip_prefix("/") {
        candidates.push(root.join(rel).join(name));
    }
    candidates
        .into_iter()
        // The module itself may carry its own name in the link.
        .filter(|c| c.as_path() != path)
        .find(|c| crc_of(c).is_ok_and(|c| c == crc))
}

/// The CRC-32 of the file at `path` (a `.gnu_debuglink` names its debug file's), read a piece
/// at a time.
fn crc_of(path: &Path) -> std::io::Result<u32> {
    let mut f = File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut piece = vec![0u8; 1 << 16];
    loop {
        match f.read(&mut piece)? {
            0 => return Ok(hasher.finalize()),
            n => hasher.update(&piece[..n]),
        }
    }
}

/// `root/.build-id/xx/yyyy….debug` for build id `id`, if that file exists and has the id.
fn by_build_id(id: &[u8], root: &Path) -> Option<PathBuf> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() < 3 {
        return None;
    }
    let path = root
        .join(".build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]));
    let data = open(&path).ok()?;
    let file = object::File::parse(&data).ok()?;
    (build_id(&file).as_deref() == Some(id)).then_some(path)
}

/// The GNU build id of an ELF file, if it has one.
pub fn build_id<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> Option<Vec<u8>> {
    if let Ok(Some(id)) = file.build_id() {
        return Some(id.to_vec());
    }
    // Some files carry the note without a program header pointing at it.
    file.section_by_name(".note.gnu.build-id")
        .and_then(|s| s.data().ok())
        .and_then(|d| d.get(16..).map(<[u8]>::to_vec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own under the system's temporary folder, removed at the end.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("heaplens-debug-file-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// This test program: an ELF file with a build id (Debian's linker adds one).
    fn this_program() -> (PathBuf, Vec<u8>, Vec<u8>) {
        let path = std::env::current_exe().unwrap();
        let data = std::fs::read(&path).unwrap();
        let id = build_id(&object::File::parse(&*data).unwrap()).expect("a build id");
        (path, data, id)
    }

    /// [`find`] of the ELF file in `data`, at `path`.
    fn find_of(path: &Path, data: &[u8], root: &Path) -> Option<PathBuf> {
        find(path, &object::File::parse(data).ok()?, root)
    }

    #[test]
    fn a_debug_file_is_found_by_build_id_only_if_it_has_that_id() {
        let (path, data, id) = this_program();
        let root = TempDir::new("root");
        assert_eq!(find_of(&path, &data, &root.0), None, "none installed");
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let dir = root.0.join(".build-id").join(&hex[..2]);
        std::fs::create_dir_all(&dir).unwrap();
        let debug = dir.join(format!("{}.debug", &hex[2..]));
        // A file of another build at that name is not taken.
        std::fs::write(&debug, b"\x7fELF not really").unwrap();
        assert_eq!(find_of(&path, &data, &root.0), None);
        std::fs::write(&debug, &data).unwrap();
        assert_eq!(find_of(&path, &data, &root.0), Some(debug));
    }

    /// A copy of this program linked to `debug` by `objcopy --add-gnu-debuglink` (binutils).
    #[test]
    fn a_debug_file_is_found_by_its_link_beside_the_module_if_its_crc_matches() {
        let (path, _, _) = this_program();
        let dir = TempDir::new("link");
        let debug = dir.0.join("prog.debug");
        std::fs::write(&debug, b"the debug data").unwrap();
        let linked = dir.0.join("prog");
        let ok = std::process::Command::new("objcopy")
            .arg("--remove-section=.gnu_debuglink")
            .arg(format!("--add-gnu-debuglink={}", debug.display()))
            .arg(&path)
            .arg(&linked)
            .status()
            .expect("objcopy (binutils) runs");
        assert!(ok.success());
        let data = std::fs::read(&linked).unwrap();
        // No debug root holds its build id: the link finds it.
        let root = TempDir::new("link-root");
        assert_eq!(find_of(&linked, &data, &root.0), Some(debug.clone()));
        // Another file under that name (its CRC differs) is not taken; the right one in a
        // `.debug` folder beside the module is.
        std::fs::write(&debug, b"other debug data").unwrap();
        assert_eq!(find_of(&linked, &data, &root.0), None);
        std::fs::create_dir_all(dir.0.join(".debug")).unwrap();
        std::fs::write(dir.0.join(".debug/prog.debug"), b"the debug data").unwrap();
        assert_eq!(
            find_of(&linked, &data, &root.0),
            Some(dir.0.join(".debug/prog.debug"))
        );
    }

    #[test]
    fn no_debug_file_is_found_for_what_is_not_elf() {
        let root = TempDir::new("not-elf");
        assert_eq!(find_of(Path::new("/x"), b"#!/bin/sh\n", &root.0), None);
        assert_eq!(by_build_id(&[1], &root.0), None);
    }
}
