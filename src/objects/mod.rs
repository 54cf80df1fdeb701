//! Object stores behind `domain::files::ObjectStore`: a directory on local disk (the embedded
//! default).

mod local;

pub use local::LocalObjects;
