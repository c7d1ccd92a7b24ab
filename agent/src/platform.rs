//! The node's platform and the choice of a manifest from an index.
//!
//! oci-client's default resolver ignores ARM variants, so an arm/v6 image
//! could be picked for an arm/v7 box (or the other way round): the agent
//! chooses itself, following containerd's matcher: os and architecture
//! must match; for `arm` the variant must match exactly (v7 boxes do not
//! run v8-only code and v6 images are the fallback nobody asked for); for
//! `arm64` an absent variant means v8.

use std::fmt;
use std::str::FromStr;

/// `os/architecture[/variant]` in the OCI spelling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this binary was built for.
    pub fn host() -> Platform {
        let (architecture, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", Some("v8")),
            // Debian's armhf (and Rust's armv7 targets) are v7.
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "riscv64" => ("riscv64", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_owned(),
            architecture: architecture.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// Whether an index entry's platform runs here.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        if os != self.os || normalise_arch(architecture) != self.architecture {
            return false;
        }
        let want = self.variant.as_deref();
        match self.architecture.as_str() {
            "arm64" => variant.unwrap_or("v8") == want.unwrap_or("v8"),
            "arm" => variant.unwrap_or("v7") == want.unwrap_or("v7"),
            _ => variant.is_none() || variant == want,
        }
    }
}

/// Architecture aliases found in the wild.
fn normalise_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "armhf" | "armel" => "arm",
        other => other,
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || format!("{s:?} is not os/architecture[/variant]");
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: (*os).to_owned(),
                architecture: normalise_arch(arch).to_owned(),
                variant: None,
            }),
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform {
                    os: (*os).to_owned(),
                    architecture: normalise_arch(arch).to_owned(),
                    variant: Some((*variant).to_owned()),
                })
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn matching_table() {
        let cases = [
            ("linux/amd64", ("linux", "amd64", None), true),
            ("linux/amd64", ("linux", "arm64", None), false),
            ("linux/amd64", ("windows", "amd64", None), false),
            ("linux/arm64/v8", ("linux", "arm64", None), true),
            ("linux/arm64/v8", ("linux", "arm64", Some("v8")), true),
            ("linux/arm64", ("linux", "arm64", Some("v8")), true),
            ("linux/arm/v7", ("linux", "arm", Some("v7")), true),
            ("linux/arm/v7", ("linux", "arm", Some("v6")), false),
            ("linux/arm/v7", ("linux", "arm", None), true),
            ("linux/arm/v6", ("linux", "arm", Some("v7")), false),
            ("linux/arm/v7", ("linux", "arm64", Some("v8")), false),
        ];
        for (node, (os, arch, variant), want) in cases {
            assert_eq!(
                p(node).matches(os, arch, variant),
                want,
                "{node} vs {os}/{arch}/{variant:?}"
            );
        }
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(p("linux/aarch64").to_string(), "linux/arm64");
        assert_eq!(p("linux/arm/v7").to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v7".parse::<Platform>().is_err());
        assert_eq!(Platform::host().os, "linux");
    }
}
