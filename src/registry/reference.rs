//! Registry references: `[oci://]HOST[:PORT]/REPO[:TAG][@sha256:HEX]`, and
//! how `--image` tells one from a local image directory.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error(
    "{input:?} is not a registry reference ({reason}); write HOST[:PORT]/REPO[:TAG|@sha256:HEX]"
)]
pub struct ReferenceError {
    pub input: String,
    pub reason: &'static str,
}

/// What a manifest is asked for by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Tag(String),
    Digest(String),
}

/// A repository in a registry, and a tag or digest in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`, as the registry is addressed and as
    /// credentials files key it.
    pub registry: String,
    pub repository: String,
    pub selector: Selector,
}

const SCHEME: &str = "oci://";

impl Reference {
    /// Parses a reference; without a tag or digest it means `latest`.
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason| ReferenceError {
            input: input.to_string(),
            reason,
        };
        let rest = input.strip_prefix(SCHEME).unwrap_or(input);
        let (registry, path) = rest
            .split_once('/')
            .ok_or(fail("no repository after the host"))?;
        if registry.is_empty()
            || !registry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        {
            return Err(fail("the host is not a host name"));
        }
        let (path, digest) = match path.split_once('@') {
            Some((p, d)) => (p, Some(d)),
            None => (path, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last = path.rsplit('/').next().unwrap_or(path);
        let (repository, tag) = match last.rsplit_once(':') {
            Some((_, tag)) => (&path[..path.len() - tag.len() - 1], Some(tag)),
            None => (path, None),
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            })
        {
            return Err(fail(
                "a repository is lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let selector = match (tag, digest) {
            (_, Some(d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or(fail("only sha256 digests are known"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(fail("a sha256 digest is 64 lowercase hex digits"));
                }
                Selector::Digest(d.to_string())
            }
            (Some(t), None) => {
                if t.is_empty()
                    || t.len() > 128
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                {
                    return Err(fail("a tag is up to 128 letters, digits, '.', '_' and '-'"));
                }
                Selector::Tag(t.to_string())
            }
            (None, None) => Selector::Tag("latest".to_string()),
        };
        Ok(Self {
            registry: registry.to_string(),
            repository: repository.to_string(),
            selector,
        })
    }

    /// The same repository, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Self {
        Self {
            selector: Selector::Digest(digest.to_string()),
            ..self.clone()
        }
    }

    /// The same repository with a tag.
    pub fn tagged(&self, tag: &str) -> Self {
        Self {
            selector: Selector::Tag(tag.to_string()),
            ..self.clone()
        }
    }

    /// `host/repo`, without tag or digest.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The tag or digest as the registry's manifest URL takes it.
    pub fn selector_str(&self) -> &str {
        match &self.selector {
            Selector::Tag(t) | Selector::Digest(t) => t,
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.selector {
            Selector::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Selector::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

/// Where `--image` points: an image directory on this host, or an artifact
/// in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Local(PathBuf),
    Registry(Reference),
}

impl ImageSource {
    /// `oci://…` is always a registry reference; an existing path is always
    /// local; otherwise a string whose first component looks like a host
    /// (has a '.' or a ':' port, or is `localhost`; the rule `docker pull`
    /// uses) is a reference, and anything else a (missing) local path.
    pub fn parse(arg: &str) -> Result<Self, ReferenceError> {
        if arg.starts_with(SCHEME) {
            return Reference::parse(arg).map(Self::Registry);
        }
        if Path::new(arg).exists() {
            return Ok(Self::Local(PathBuf::from(arg)));
        }
        let looks_like_host = arg
            .split_once('/')
            .is_some_and(|(h, _)| h.contains('.') || h.contains(':') || h == "localhost")
            && !arg.starts_with('.')
            && !arg.starts_with('/');
        if looks_like_host {
            return Reference::parse(arg).map(Self::Registry);
        }
        Ok(Self::Local(PathBuf::from(arg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_tag_digest_port_and_scheme() {
        let r = Reference::parse("127.0.0.1:5000/team/standin:gen-0002").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/standin");
        assert_eq!(r.selector, Selector::Tag("gen-0002".into()));
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&format!("oci://ghcr.io/o/img@{d}")).unwrap();
        assert_eq!(r.selector, Selector::Digest(d.clone()));
        assert_eq!(r.to_string(), format!("ghcr.io/o/img@{d}"));
        let r = Reference::parse("localhost/img").unwrap();
        assert_eq!(r.selector, Selector::Tag("latest".into()));
        assert!(Reference::parse("host:5000/Upper").is_err());
        assert!(Reference::parse("host/img@sha256:abc").is_err());
        assert!(Reference::parse("justaname").is_err());
    }

    #[test]
    fn image_arguments_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().to_str().unwrap();
        assert_eq!(
            ImageSource::parse(local).unwrap(),
            ImageSource::Local(PathBuf::from(local))
        );
        assert_eq!(
            ImageSource::parse("images/standin").unwrap(),
            ImageSource::Local(PathBuf::from("images/standin"))
        );
        assert!(matches!(
            ImageSource::parse("127.0.0.1:5000/standin:latest").unwrap(),
            ImageSource::Registry(_)
        ));
        assert!(matches!(
            ImageSource::parse("oci://registry/standin").unwrap(),
            ImageSource::Registry(_)
        ));
        assert!(ImageSource::parse("oci://nohost").is_err());
    }
}
