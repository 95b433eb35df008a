//! The image manifest (`<image stem>.manifest.json`): what was built from what, and every
//! partition's place and digest, so `kiln verify` can check an image part by part.
//! Deterministic: it holds no wall-clock time, only the recipe's `source_date_epoch`.
use crate::disk::{ImageDigest, Layout, PlacedPartition};
use crate::image::boot::BootInfo;
use crate::plan::Plan;
use crate::recipe::sitevars::SiteVar;
use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use uuid::Uuid;

/// Bumped when a field changes meaning or goes away.
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub kiln_manifest: u32,
    pub recipe: RecipeRef,
    /// Hash of the package lock file the build used (none yet).
    pub lock_hash: Option<String>,
    pub kiln_version: String,
    pub source_date_epoch: i64,
    pub architecture: String,
    pub kernel_version: String,
    pub image: ImageInfo,
    pub partitions: Vec<PartitionInfo>,
    /// The image's Debian archives and what it installs by itself (None in older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updates: Option<UpdatePolicy>,
    /// The key that signed `SHA256SUMS`; None for an unsigned build.
    pub signing_key: Option<KeyInfo>,
    /// The site variables the image declares (docs/site.md); absent when none, so images
    /// without site variables keep their manifest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_vars: Vec<SiteVar>,
    /// Guest service ports (the recipe's `[[ports]]`) that `kiln boot` and `kiln test` forward.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<crate::recipe::Port>,
}

/// The image's update policy, as its apt configuration has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// `security` (unattended-upgrades from the security archive) or `off`.
    pub automatic_updates: crate::recipe::AutomaticUpdates,
    /// The archives of the image's apt sources, in order (the suite, updates, security).
    pub archives: Vec<ArchiveInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub uri: String,
    pub suite: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipeRef {
    pub name: String,
    pub version: String,
    /// sha256 of the resolved recipe (the seed of every GUID in the image).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// File name of the raw image.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub disk_guid: Uuid,
}

/// A partition as the GPT places it (the fields are inlined in the JSON), and its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    #[serde(flatten)]
    pub placed: PlacedPartition,
    /// SHA-256 of the partition's full extent.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// minisign key id (16 hex digits, as `minisign` shows it).
    pub key_id: String,
    /// The public key, base64 (the second line of the `.pub` file).
    pub public_key: String,
}

impl Manifest {
    /// The manifest of an image laid out as `layout` with digests `digest`.
    pub fn new(
        plan: &Plan,
        boot: &BootInfo,
        layout: &Layout,
        digest: &ImageDigest,
        signing_key: Option<KeyInfo>,
    ) -> Result<Manifest> {
        ensure!(
            layout.partitions.len() == digest.partitions.len(),
            "internal error: {} partitions but {} digests",
            layout.partitions.len(),
            digest.partitions.len()
        );
        let partitions = layout
            .partitions
            .iter()
            .zip(&digest.partitions)
            .map(|(p, d)| PartitionInfo { placed: p.clone(), sha256: d.sha256.clone() })
            .collect();
        let r = &plan.recipe;
        Ok(Manifest {
            kiln_manifest: FORMAT,
            recipe: RecipeRef {
                name: r.name.to_string(),
                version: r.version.to_string(),
                hash: plan.recipe_hash.clone(),
            },
            lock_hash: None,
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            source_date_epoch: r.source_date_epoch,
            architecture: plan.arch().to_string(),
            kernel_version: boot.kernel_version.clone(),
            image: ImageInfo {
                file: plan.image_name.clone(),
                size: digest.size,
                sha256: digest.sha256.clone(),
                disk_guid: layout.disk_guid,
            },
            partitions,
            updates: Some(UpdatePolicy {
                automatic_updates: r.system.automatic_updates,
                archives: plan.archives().into_iter().map(|a| ArchiveInfo { uri: a.uri, suite: a.suite }).collect(),
            }),
            signing_key,
            site_vars: r.site_vars.clone(),
            ports: plan.ports.clone(),
        })
    }

    /// Pretty JSON with a final newline.
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self).context("serialising the manifest")? + "\n")
    }

    pub fn from_json(text: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_str(text).context("not a kiln manifest")?;
        ensure!(
            m.kiln_manifest == FORMAT,
            "manifest format {} is not supported (this kiln reads format {FORMAT})",
            m.kiln_manifest
        );
        for v in &m.site_vars {
            v.validate().map_err(anyhow::Error::msg)?;
        }
        Ok(m)
    }

    pub fn read(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("reading {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_formats() {
        let m = Manifest {
            kiln_manifest: FORMAT,
            recipe: RecipeRef { name: "x".into(), version: "1".into(), hash: "ab".into() },
            lock_hash: None,
            kiln_version: "0.1.0".into(),
            source_date_epoch: 1,
            architecture: "x86_64".into(),
            kernel_version: "6.1".into(),
            image: ImageInfo {
                file: "x-1-x86_64.img".into(),
                size: 2,
                sha256: "cd".into(),
                disk_guid: Uuid::from_u128(7),
            },
            partitions: vec![],
            updates: Some(UpdatePolicy {
                automatic_updates: crate::recipe::AutomaticUpdates::Security,
                archives: vec![ArchiveInfo { uri: "http://m/debian-security".into(), suite: "trixie-security".into() }],
            }),
            signing_key: None,
            site_vars: vec![],
            ports: vec![crate::recipe::Port { name: "web".into(), guest: 443, protocol: "tcp".into(), scheme: None }],
        };
        let json = m.to_json().unwrap();
        assert!(json.contains("\"lock_hash\": null"), "{json}");
        assert!(json.contains("\"automatic_updates\": \"security\""), "{json}");
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        // Manifests of older kilns have no update policy.
        let older = Manifest { updates: None, ..m.clone() };
        assert_eq!(Manifest::from_json(&older.to_json().unwrap()).unwrap(), older);
        let other = json.replace("\"kiln_manifest\": 1", "\"kiln_manifest\": 9");
        assert!(Manifest::from_json(&other).unwrap_err().to_string().contains("format 9"));
    }
}
