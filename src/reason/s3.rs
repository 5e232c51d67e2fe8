//! S3 error codes: each with its one HTTP status and its one `<Code>` string, which is
//! also the bounded label of `lakegate_request_errors_total{code}` and the `code` field
//! of the log line. Here rather than in `proto::s3` (which re-exports it) so that
//! telemetry, a leaf, can size and label its counters from it.

/// Declares [`Code`] and [`Code::ALL`] from one list, so that a code added to the enum
/// is in `ALL` (and so has a counter) by construction.
macro_rules! codes {
    ($($(#[$doc:meta])* $code:ident,)*) => {
        /// An S3 error code: one status, one code string, one label.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Code {
            $($(#[$doc])* $code,)*
        }

        impl Code {
            /// Every code, in declaration order: `Code::ALL[c.index()] == c`.
            pub const ALL: &'static [Code] = &[$(Code::$code,)*];
        }
    };
}

codes! {
    /// 403: no rule admits this identity for this action, or the store refused the
    /// path (a symlink, a permission), or the bearer token's scope does not cover it.
    AccessDenied,
    /// 401: `[tokens]` is set and the request has no valid bearer token (the RFC 6750
    /// details ride in `WWW-Authenticate`).
    InvalidToken,
    /// 404: the object does not exist.
    NoSuchKey,
    /// 404: the bucket's folder does not exist.
    NoSuchBucket,
    /// 404: no multipart upload with this id for this key and identity.
    NoSuchUpload,
    /// 400: a part named in CompleteMultipartUpload is missing or its ETag differs.
    InvalidPart,
    /// 400: the parts of CompleteMultipartUpload are not in ascending order.
    InvalidPartOrder,
    /// 400: a part other than the last is smaller than 5 MiB.
    EntityTooSmall,
    /// 400: an XML request body is not well formed or not what the operation takes.
    MalformedXML,
    /// 400: a parameter or header value is out of its domain.
    InvalidArgument,
    /// 400: the request is malformed or inconsistent.
    InvalidRequest,
    /// 400: the request target does not decode.
    InvalidURI,
    /// 400: the bucket name breaks the naming rules.
    InvalidBucketName,
    /// 400: the key is longer than 1024 bytes (or a segment than 255).
    KeyTooLongError,
    /// 400: the body is shorter than the length announced.
    IncompleteBody,
    /// 400: a checksum does not match the body.
    BadDigest,
    /// 400: a checksum header is not a well-formed value.
    InvalidDigest,
    /// 400: `x-amz-content-sha256` does not match the body.
    XAmzContentSHA256Mismatch,
    /// 405: a method the object API does not have.
    MethodNotAllowed,
    /// 408: the head or body did not arrive in time.
    RequestTimeout,
    /// 409: the key collides with a folder (or an object is used as a folder).
    KeyConflict,
    /// 409: DeleteBucket on a bucket that still holds objects (or uploads).
    BucketNotEmpty,
    /// 409: CreateBucket of a bucket that exists.
    BucketAlreadyOwnedByYou,
    /// 400: the `x-amz-meta-*` headers add up to more than 2 KiB.
    MetadataTooLarge,
    /// 400: CreateBucket names a region other than the store's.
    InvalidLocationConstraint,
    /// 411: a PUT without a length or chunked framing.
    MissingContentLength,
    /// 412: a precondition (`If-Match`, `If-None-Match: *` on a write,
    /// `If-Unmodified-Since`) did not hold.
    PreconditionFailed,
    /// 413: over `max_object_size`.
    EntityTooLarge,
    /// 416: the range lies outside the object.
    InvalidRange,
    /// 431: the request head is over its limit.
    RequestHeaderSectionTooLarge,
    /// 500: anything unexpected.
    InternalError,
    /// 501: an operation, parameter or header the store does not implement.
    NotImplemented,
    /// 503: the appliance is shedding load or draining, or (s3 backend) every
    /// upstream endpoint is down.
    SlowDown,
    /// 502 (s3 backend): the upstream failed (5xx, a broken connection, an answer we
    /// cannot read, or a refusal of our own credentials).
    BadGateway,
    /// 504 (s3 backend): the upstream did not answer within `response_timeout`.
    GatewayTimeout,
    /// 507: the disk is full (the partial upload is removed).
    InsufficientStorage,
}

impl Code {
    /// The index of this code in [`Code::ALL`] (a counter slot).
    pub fn index(self) -> usize {
        self as usize
    }
}

impl Code {
    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            Code::AccessDenied => 403,
            Code::InvalidToken => 401,
            Code::NoSuchKey | Code::NoSuchBucket | Code::NoSuchUpload => 404,
            Code::InvalidArgument
            | Code::InvalidRequest
            | Code::InvalidURI
            | Code::InvalidBucketName
            | Code::KeyTooLongError
            | Code::IncompleteBody
            | Code::BadDigest
            | Code::InvalidDigest
            | Code::XAmzContentSHA256Mismatch
            | Code::InvalidPart
            | Code::InvalidPartOrder
            | Code::EntityTooSmall
            | Code::MetadataTooLarge
            | Code::InvalidLocationConstraint
            | Code::MalformedXML => 400,
            Code::MethodNotAllowed => 405,
            Code::RequestTimeout => 408,
            Code::KeyConflict | Code::BucketNotEmpty | Code::BucketAlreadyOwnedByYou => 409,
            Code::MissingContentLength => 411,
            Code::PreconditionFailed => 412,
            Code::EntityTooLarge => 413,
            Code::InvalidRange => 416,
            Code::RequestHeaderSectionTooLarge => 431,
            Code::InternalError => 500,
            Code::NotImplemented => 501,
            Code::SlowDown => 503,
            Code::BadGateway => 502,
            Code::GatewayTimeout => 504,
            Code::InsufficientStorage => 507,
        }
    }

    /// The S3 error code, as in `<Code>`; also the bounded label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::AccessDenied => "AccessDenied",
            Code::InvalidToken => "InvalidToken",
            Code::NoSuchKey => "NoSuchKey",
            Code::NoSuchBucket => "NoSuchBucket",
            Code::NoSuchUpload => "NoSuchUpload",
            Code::InvalidPart => "InvalidPart",
            Code::InvalidPartOrder => "InvalidPartOrder",
            Code::EntityTooSmall => "EntityTooSmall",
            Code::MalformedXML => "MalformedXML",
            Code::InvalidArgument => "InvalidArgument",
            Code::InvalidRequest => "InvalidRequest",
            Code::InvalidURI => "InvalidURI",
            Code::InvalidBucketName => "InvalidBucketName",
            Code::KeyTooLongError => "KeyTooLongError",
            Code::IncompleteBody => "IncompleteBody",
            Code::BadDigest => "BadDigest",
            Code::InvalidDigest => "InvalidDigest",
            Code::XAmzContentSHA256Mismatch => "XAmzContentSHA256Mismatch",
            Code::MethodNotAllowed => "MethodNotAllowed",
            Code::RequestTimeout => "RequestTimeout",
            Code::KeyConflict => "KeyConflict",
            Code::BucketNotEmpty => "BucketNotEmpty",
            Code::BucketAlreadyOwnedByYou => "BucketAlreadyOwnedByYou",
            Code::MetadataTooLarge => "MetadataTooLarge",
            Code::InvalidLocationConstraint => "InvalidLocationConstraint",
            Code::MissingContentLength => "MissingContentLength",
            Code::PreconditionFailed => "PreconditionFailed",
            Code::EntityTooLarge => "EntityTooLarge",
            Code::InvalidRange => "InvalidRange",
            Code::RequestHeaderSectionTooLarge => "RequestHeaderSectionTooLarge",
            Code::InternalError => "InternalError",
            Code::NotImplemented => "NotImplemented",
            Code::SlowDown => "SlowDown",
            Code::BadGateway => "BadGateway",
            Code::GatewayTimeout => "GatewayTimeout",
            Code::InsufficientStorage => "InsufficientStorage",
        }
    }

    /// The message sent when nothing more specific (and safe) is known.
    pub fn default_message(self) -> &'static str {
        match self {
            Code::AccessDenied => "Access Denied",
            Code::InvalidToken => "The bearer token is missing or invalid.",
            Code::NoSuchKey => "The specified key does not exist.",
            Code::NoSuchBucket => "The specified bucket does not exist.",
            Code::NoSuchUpload => {
                "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
            }
            Code::InvalidPart => {
                "One or more of the specified parts could not be found or its entity tag did not match."
            }
            Code::InvalidPartOrder => "The list of parts was not in ascending order.",
            Code::EntityTooSmall => {
                "Your proposed upload is smaller than the minimum allowed object size."
            }
            Code::MalformedXML => {
                "The XML you provided was not well-formed or did not validate against our published schema."
            }
            Code::InvalidArgument => "Invalid Argument",
            Code::InvalidRequest => "Invalid Request",
            Code::InvalidURI => "Couldn't parse the specified URI.",
            Code::InvalidBucketName => "The specified bucket is not valid.",
            Code::KeyTooLongError => "Your key is too long.",
            Code::IncompleteBody => {
                "You did not provide the number of bytes specified by the length header."
            }
            Code::BadDigest => "The checksum you specified did not match what we received.",
            Code::InvalidDigest => "The checksum you specified is not valid.",
            Code::XAmzContentSHA256Mismatch => {
                "The provided 'x-amz-content-sha256' header does not match what was computed."
            }
            Code::MethodNotAllowed => "The specified method is not allowed against this resource.",
            Code::RequestTimeout => {
                "Your socket connection to the server was not read from or written to within the timeout period."
            }
            Code::KeyConflict => "The key collides with an existing folder or object.",
            Code::BucketNotEmpty => "The bucket you tried to delete is not empty.",
            Code::BucketAlreadyOwnedByYou => {
                "The bucket you tried to create already exists, and you own it."
            }
            Code::MetadataTooLarge => {
                "Your metadata headers exceed the maximum allowed metadata size."
            }
            Code::InvalidLocationConstraint => {
                "The specified location-constraint is not valid for this store."
            }
            Code::MissingContentLength => "You must provide the Content-Length HTTP header.",
            Code::PreconditionFailed => {
                "At least one of the preconditions you specified did not hold."
            }
            Code::EntityTooLarge => "Your proposed upload exceeds the maximum allowed object size.",
            Code::InvalidRange => "The requested range is not satisfiable",
            Code::RequestHeaderSectionTooLarge => {
                "Your request header section exceeds the maximum allowed size."
            }
            Code::InternalError => "We encountered an internal error. Please try again.",
            Code::NotImplemented => {
                "A header or query you provided implies functionality that is not implemented."
            }
            Code::SlowDown => "Please reduce your request rate.",
            Code::BadGateway => "The storage upstream failed to serve the request.",
            Code::GatewayTimeout => "The storage upstream did not answer in time.",
            Code::InsufficientStorage => "The store has no space left for this object.",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_code_once_at_its_index_with_a_distinct_label() {
        let mut seen = std::collections::BTreeSet::new();
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(c.index(), i, "{c:?}");
            assert!(seen.insert(c.as_str()), "{c:?}");
            assert!((400..600).contains(&c.status()), "{c:?}");
        }
    }
}
