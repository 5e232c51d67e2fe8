//! Store faults: what the filesystem said when a store operation failed. Each fault
//! has one S3 code (so one status), one label (the `fault` field of the `request
//! refused` log line and of `lakegate_store_errors_total{fault}`), and says whether it
//! is the store's own failure rather than the request's. The classification of an OS
//! error into a fault is `backend::store::fault_of`, the one place that reads errno.

use super::s3::Code;

/// Declares [`Fault`] and [`Fault::ALL`] from one list (as `codes!` does for `Code`).
macro_rules! faults {
    ($($(#[$doc:meta])* $fault:ident = $label:literal,)*) => {
        /// What the filesystem said when a store operation failed.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Fault {
            $($(#[$doc])* $fault,)*
        }

        impl Fault {
            /// Every fault, in declaration order: `Fault::ALL[f.index()] == f`.
            pub const ALL: &'static [Fault] = &[$(Fault::$fault,)*];

            /// The bounded label (log field and metric).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Fault::$fault => $label,)*
                }
            }
        }
    };
}

faults! {
    /// ENOENT: the key, the bucket or the upload is not there.
    NotFound = "not_found",
    /// A conditional write's precondition did not hold when the rename was made.
    Precondition = "precondition",
    /// EACCES, EPERM, or ELOOP (a symlink on the way, which the store never follows).
    Denied = "denied",
    /// ENOTDIR, EISDIR, ENOTEMPTY: a key that collides with a folder, or an object
    /// used as a folder.
    Conflict = "conflict",
    /// ENAMETOOLONG.
    NameTooLong = "name_too_long",
    /// A name or value the store refuses (EINVAL from our own checks).
    Invalid = "invalid",
    /// What this filesystem cannot do (no user xattrs, an operation it lacks).
    Unsupported = "unsupported",
    /// EFBIG: over the filesystem's file size limit.
    TooLarge = "too_large",
    /// ENOSPC or EDQUOT: the disk or the quota is full.
    NoSpace = "no_space",
    /// EROFS: the store's filesystem is mounted read-only.
    ReadOnly = "read_only",
    /// EMFILE or ENFILE: out of file descriptors.
    NoDescriptors = "no_descriptors",
    /// EIO: the device failed a read, a write or an fsync.
    Io = "io",
    /// Anything else the filesystem said.
    Other = "other",
}

impl Fault {
    /// The index of this fault in [`Fault::ALL`] (a counter slot).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The S3 code the client is answered with. `not_found` is NoSuchKey, NoSuchBucket
    /// or NoSuchUpload: which one only the caller knows.
    pub fn code(self, not_found: Code) -> Code {
        match self {
            Fault::NotFound => not_found,
            Fault::Precondition => Code::PreconditionFailed,
            Fault::Denied => Code::AccessDenied,
            Fault::Conflict => Code::KeyConflict,
            Fault::NameTooLong => Code::KeyTooLongError,
            Fault::Invalid => Code::InvalidArgument,
            Fault::Unsupported => Code::NotImplemented,
            Fault::TooLarge => Code::EntityTooLarge,
            Fault::NoSpace => Code::InsufficientStorage,
            Fault::ReadOnly | Fault::NoDescriptors | Fault::Io | Fault::Other => {
                Code::InternalError
            }
        }
    }

    /// The store failed, whatever the request: what an operator alerts on. A missing
    /// key, a lost precondition or a refused name is the request's doing.
    pub fn is_store_failure(self) -> bool {
        matches!(
            self,
            Fault::NoSpace | Fault::ReadOnly | Fault::NoDescriptors | Fault::Io | Fault::Other
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_fault_once_at_its_index_with_a_distinct_label() {
        let mut seen = std::collections::BTreeSet::new();
        for (i, f) in Fault::ALL.iter().enumerate() {
            assert_eq!(f.index(), i, "{f:?}");
            assert!(seen.insert(f.as_str()), "{f:?}");
        }
    }

    #[test]
    fn a_store_failure_is_a_500_or_a_507_and_the_rest_are_the_requests() {
        for &f in Fault::ALL {
            let code = f.code(Code::NoSuchKey);
            let server = matches!(code, Code::InternalError | Code::InsufficientStorage);
            assert_eq!(f.is_store_failure(), server, "{f:?} {code:?}");
        }
        assert_eq!(Fault::NotFound.code(Code::NoSuchUpload), Code::NoSuchUpload);
    }
}
