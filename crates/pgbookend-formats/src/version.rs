//! The supported PostgreSQL majors and the version numbers that identify them.
//!
//! A major is recognised from `pg_control` by two numbers: `pg_control_version`
//! (the layout of `pg_control` itself) and `catalog_version_no` (the layout of
//! the system catalogs). Several majors share a `pg_control_version` (1300 is
//! 13, 14, 15 and 16), so the catalog version decides. `CATALOG_VERSION_NO` is
//! fixed for the life of a stable branch; during a development cycle it only
//! grows. So the catalog versions of major N (betas and release candidates
//! included) are those greater than major N-1's final value and at most major
//! N's final value.
//!
//! The final values below are `CATALOG_VERSION_NO` from
//! `src/include/catalog/catversion.h` on each `REL_N_STABLE` branch (read
//! from the 13.16, 14.2, 15.18, 16.2, 17.11 and 18.6 sources, and checked
//! against `pg_control` files written by 13.23, 14.23, 15.18, 16.14, 17.10
//! and 18.4). 12's value bounds 13 from below.

/// Calls the macro `$m` with the supported majors, the one list every other list of
/// majors is built from (`SUPPORTED_MAJORS`, the tests' `per_major!`): `$m! { ARGS ;
/// (13 pg13) (14 pg14) ... }`, each a number and a name for generated items. Adding a
/// major starts here.
#[macro_export]
macro_rules! for_each_supported_major {
    ($m:ident $(, $arg:tt)*) => {
        $m! { $($arg),* ; (13 pg13) (14 pg14) (15 pg15) (16 pg16) (17 pg17) (18 pg18) }
    };
}

macro_rules! supported_majors_const {
    (; $(($n:literal $pg:ident))*) => {
        /// The PostgreSQL majors this crate can read and write formats for.
        pub const SUPPORTED_MAJORS: [u32; [$($n),*].len()] = [$($n),*];
    };
}
for_each_supported_major!(supported_majors_const);

/// The oldest supported major, for messages ("supports 13 to 18").
pub const OLDEST_MAJOR: u32 = SUPPORTED_MAJORS[0];
/// The newest supported major, for messages.
pub const NEWEST_MAJOR: u32 = SUPPORTED_MAJORS[SUPPORTED_MAJORS.len() - 1];

/// `CATALOG_VERSION_NO` of 12's stable branch: every catalog version of 13 is greater.
const CATVERSION_12: u32 = 201_909_212;

/// Per supported major: (major, `PG_CONTROL_VERSION`, final `CATALOG_VERSION_NO`).
const MAJORS: [(u32, u32, u32); 6] = [
    (13, 1300, 202_007_201),
    (14, 1300, 202_107_181),
    (15, 1300, 202_209_061),
    (16, 1300, 202_307_071),
    (17, 1700, 202_406_281),
    (18, 1800, 202_506_291),
];

/// Whether pgbookend supports PostgreSQL major `major`, to refuse early and clearly.
pub fn is_supported(major: u32) -> bool {
    SUPPORTED_MAJORS.contains(&major)
}

/// The major of a server from its `server_version_num` (`150018` is 15), so
/// callers never do the arithmetic themselves. `None` if not supported.
pub fn major_from_server_version_num(num: u32) -> Option<u32> {
    let major = server_major(num);
    is_supported(major).then_some(major)
}

/// The major a `server_version_num` names, supported or not (to say which one is not).
pub fn server_major(num: u32) -> u32 {
    num / 10_000
}

/// The major that wrote a `pg_control` with these two version numbers, or
/// `None` if it is not a supported major (or not a final layout of one).
/// This is how [`crate::control::parse`] picks the layout.
pub fn major_from_control(pg_control_version: u32, catalog_version_no: u32) -> Option<u32> {
    let mut lower = CATVERSION_12;
    for (major, control_version, last) in MAJORS {
        if catalog_version_no > lower && catalog_version_no <= last {
            return (pg_control_version == control_version).then_some(major);
        }
        lower = last;
    }
    None
}

/// The `PG_CONTROL_VERSION` a supported major writes, for messages and tests.
pub fn pg_control_version(major: u32) -> Option<u32> {
    MAJORS.iter().find(|m| m.0 == major).map(|m| m.1)
}

/// The final `CATALOG_VERSION_NO` of a supported major's stable branch.
pub fn catalog_version_no(major: u32) -> Option<u32> {
    MAJORS.iter().find(|m| m.0 == major).map(|m| m.2)
}

/// The directory a server of `major` with catalog version `catalog_version_no` keeps
/// inside each tablespace location (`PG_15_202209061`): how a restored copy of a
/// tablespace is recognised.
pub fn tablespace_version_dir(major: u32, catalog_version_no: u32) -> String {
    format!("PG_{major}_{catalog_version_no}")
}

/// Whether `name` has the form of a tablespace version directory (`PG_<major>_<catversion>`,
/// any major): the only entries a tablespace location holds.
pub fn is_tablespace_version_dir(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("PG_") else {
        return false;
    };
    let Some((major, cat)) = rest.split_once('_') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    digits(major) && digits(cat)
}

/// Whether `major` names its low-level backup functions `pg_backup_start` /
/// `pg_backup_stop` (15 and later) rather than `pg_start_backup` /
/// `pg_stop_backup` (13 and 14).
pub fn uses_pg_backup_start(major: u32) -> bool {
    major >= 15
}

/// The signatures of the low-level backup functions a backup of `major` calls (for
/// `has_function_privilege`): start, then stop.
pub fn backup_function_signatures(major: u32) -> [&'static str; 2] {
    if uses_pg_backup_start(major) {
        ["pg_backup_start(text, boolean)", "pg_backup_stop(boolean)"]
    } else {
        [
            "pg_start_backup(text, boolean, boolean)",
            "pg_stop_backup(boolean, boolean)",
        ]
    }
}

/// Whether `major` has `idle_session_timeout` (14 and later), which a session that
/// holds a backup open must turn off.
pub fn has_idle_session_timeout(major: u32) -> bool {
    major >= 14
}

/// Whether `initdb` of `major` enables data checksums by default (18 and later), so a
/// cluster without them needs `--no-data-checksums`.
pub fn initdb_checksums_by_default(major: u32) -> bool {
    major >= 18
}

/// The major named by a data directory's `PG_VERSION` file (`"15\n"`), if supported.
/// The text is hostile: anything but a short decimal number of a supported major is `None`.
pub fn major_from_pg_version_file(text: &str) -> Option<u32> {
    let t = text.strip_suffix('\n').unwrap_or(text);
    if t.is_empty() || t.len() > 4 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok().filter(|m| is_supported(*m))
}

/// Whether `amcheck` of `major` has `verify_heapam` (14 and later), the heap check a
/// test restore runs besides the B-tree checks.
pub fn has_verify_heapam(major: u32) -> bool {
    major >= 14
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_version_file() {
        assert_eq!(major_from_pg_version_file("15\n"), Some(15));
        assert_eq!(major_from_pg_version_file("13"), Some(13));
        assert_eq!(major_from_pg_version_file("12\n"), None);
        assert_eq!(major_from_pg_version_file(" 15\n"), None);
        assert_eq!(major_from_pg_version_file("9.6\n"), None);
        assert_eq!(major_from_pg_version_file(""), None);
    }

    #[test]
    fn backup_functions_per_major() {
        assert_eq!(
            backup_function_signatures(14)[0],
            "pg_start_backup(text, boolean, boolean)"
        );
        assert_eq!(backup_function_signatures(15)[1], "pg_backup_stop(boolean)");
    }

    #[test]
    fn verify_heapam_from_14() {
        assert!(!has_verify_heapam(13));
        assert!(has_verify_heapam(14));
        assert!(has_verify_heapam(18));
    }

    #[test]
    fn tablespace_dirs() {
        assert_eq!(tablespace_version_dir(15, 202_209_061), "PG_15_202209061");
        assert!(is_tablespace_version_dir("PG_15_202209061"));
        for bad in ["PG_15", "PG__1", "PG_x_1", "pg_15_1", "PG_15_1/..", ""] {
            assert!(!is_tablespace_version_dir(bad), "{bad}");
        }
    }

    #[test]
    fn recognises_final_catalog_versions() {
        for (major, cv, cat) in MAJORS {
            assert_eq!(major_from_control(cv, cat), Some(major));
            assert_eq!(pg_control_version(major), Some(cv));
            assert_eq!(catalog_version_no(major), Some(cat));
        }
    }

    #[test]
    fn ranges_and_mismatches() {
        // A 13 beta: after 12's final, before 13's final.
        assert_eq!(major_from_control(1300, 202_005_011), Some(13));
        // 12's own catalog version is not 13.
        assert_eq!(major_from_control(1300, CATVERSION_12), None);
        assert_eq!(major_from_control(1201, CATVERSION_12), None);
        // 17 development before pg_control_version became 1700.
        assert_eq!(major_from_control(1300, 202_401_011), None);
        assert_eq!(major_from_control(1700, 202_401_011), Some(17));
        // Wrong pg_control_version for the catalog range.
        assert_eq!(major_from_control(1700, 202_209_061), None);
        // 19 development.
        assert_eq!(major_from_control(1800, 202_507_011), None);
    }

    #[test]
    fn server_version_num() {
        assert_eq!(major_from_server_version_num(130_023), Some(13));
        assert_eq!(major_from_server_version_num(180_004), Some(18));
        assert_eq!(major_from_server_version_num(120_000), None);
        assert_eq!(major_from_server_version_num(190_000), None);
        assert_eq!(server_major(190_000), 19);
        assert!(!uses_pg_backup_start(14));
        assert!(uses_pg_backup_start(15));
    }

    #[test]
    fn capabilities() {
        assert_eq!((OLDEST_MAJOR, NEWEST_MAJOR), (13, 18));
        assert!(!has_idle_session_timeout(13));
        assert!(has_idle_session_timeout(14));
        assert!(!initdb_checksums_by_default(17));
        assert!(initdb_checksums_by_default(18));
    }
}
