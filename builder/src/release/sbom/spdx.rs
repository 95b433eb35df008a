//! The SPDX 2.3 JSON document: the image as the described package, containing one package
//! per installed .deb (with purl, source package, licence and .deb checksum).
//!
//! Deterministic: `created` is the recipe's `source_date_epoch`, the namespace is derived
//! from the recipe hash and the image digest, and packages come in a fixed order.
use super::{DebPackage, Inventory};
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What the document describes besides the packages: the image itself.
#[derive(Debug, Clone)]
pub struct ImageFacts<'a> {
    /// Recipe name and version (the image package's name and version).
    pub name: &'a str,
    pub version: &'a str,
    pub image_file: &'a str,
    pub image_sha256: &'a str,
    pub recipe_hash: &'a str,
    pub source_date_epoch: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<Package>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicence>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
    license_list_version: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Package {
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    name: String,
    version_info: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    package_file_name: Option<String>,
    supplier: &'static str,
    download_location: &'static str,
    files_analyzed: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    checksums: Vec<Checksum>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Checksum {
    algorithm: &'static str,
    checksum_value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicence {
    license_id: String,
    extracted_text: String,
    name: String,
}

const NOASSERTION: &str = "NOASSERTION";
const IMAGE_ID: &str = "SPDXRef-Image";

/// The SBOM of an image holding `inventory`, as pretty JSON with a final newline.
pub fn document(facts: &ImageFacts, inventory: &Inventory) -> Result<String> {
    let stem = facts.image_file.strip_suffix(".img").unwrap_or(facts.image_file);
    let mut packages = vec![Package {
        spdx_id: IMAGE_ID.into(),
        name: facts.name.into(),
        version_info: facts.version.into(),
        package_file_name: Some(facts.image_file.into()),
        supplier: NOASSERTION,
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: vec![Checksum { algorithm: "SHA256", checksum_value: facts.image_sha256.into() }],
        source_info: Some(format!(
            "built by kiln {} from recipe {} {} (recipe sha256 {})",
            env!("CARGO_PKG_VERSION"),
            facts.name,
            facts.version,
            facts.recipe_hash
        )),
        license_concluded: NOASSERTION,
        license_declared: NOASSERTION.into(),
        copyright_text: NOASSERTION,
        external_refs: vec![],
        primary_package_purpose: Some("OPERATING-SYSTEM"),
    }];
    let mut relationships = vec![Relationship {
        spdx_element_id: "SPDXRef-DOCUMENT".into(),
        relationship_type: "DESCRIBES",
        related_spdx_element: IMAGE_ID.into(),
    }];
    let mut refs: BTreeMap<String, String> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for p in &inventory.packages {
        let id = unique_id(&mut ids, p);
        if let Some(l) = &p.licence {
            for (r, name) in &l.refs {
                refs.entry(r.clone()).or_insert_with(|| name.clone());
            }
        }
        relationships.push(Relationship {
            spdx_element_id: IMAGE_ID.into(),
            relationship_type: "CONTAINS",
            related_spdx_element: id.clone(),
        });
        packages.push(deb_package(id, p));
    }
    let doc = Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: stem.to_string(),
        document_namespace: format!("https://kiln.invalid/spdx/{stem}/{}/{}", facts.recipe_hash, facts.image_sha256),
        creation_info: CreationInfo {
            created: rfc3339(facts.source_date_epoch)?,
            creators: vec![format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
            license_list_version: list_version(),
        },
        packages,
        relationships,
        has_extracted_licensing_infos: refs
            .into_iter()
            .map(|(id, name)| ExtractedLicence {
                extracted_text: format!("The licence called `{name}` in the machine-readable Debian copyright file (/usr/share/doc/PACKAGE/copyright) of each package that declares it; the text is in that file."),
                license_id: id,
                name,
            })
            .collect(),
    };
    Ok(serde_json::to_string_pretty(&doc).context("serialising the SBOM")? + "\n")
}

fn deb_package(spdx_id: String, p: &DebPackage) -> Package {
    let source = if p.source == p.name && p.source_version == p.version {
        format!("Debian source package {}", p.source)
    } else {
        format!("Debian source package {} {}", p.source, p.source_version)
    };
    Package {
        spdx_id,
        name: p.name.clone(),
        version_info: p.version.clone(),
        package_file_name: p.deb_file.clone(),
        supplier: "Organization: Debian",
        download_location: NOASSERTION,
        files_analyzed: false,
        checksums: p.deb_sha256.iter().map(|s| Checksum { algorithm: "SHA256", checksum_value: s.clone() }).collect(),
        source_info: Some(format!("built from {source}")),
        license_concluded: NOASSERTION,
        license_declared: p.licence.as_ref().map(|l| l.expression.clone()).unwrap_or_else(|| NOASSERTION.into()),
        copyright_text: NOASSERTION,
        external_refs: vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: purl(p),
        }],
        primary_package_purpose: None,
    }
}

/// `pkg:deb/debian/<name>@<version>?arch=<arch>`, percent-encoded as the purl spec asks.
pub fn purl(p: &DebPackage) -> String {
    format!("pkg:deb/debian/{}@{}?arch={}", percent(&p.name), percent(&p.version), percent(&p.architecture))
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `SPDXRef-deb-<name>-<arch>` made of the characters SPDX ids allow, unique in the document.
fn unique_id(ids: &mut BTreeSet<String>, p: &DebPackage) -> String {
    let clean = |s: &str| {
        s.replace('+', "plus")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
            .collect::<String>()
    };
    let base = format!("SPDXRef-deb-{}-{}", clean(&p.name), clean(&p.architecture));
    let mut id = base.clone();
    let mut n = 2;
    while !ids.insert(id.clone()) {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// `2025-01-01T00:00:00Z` for 1735689600.
pub fn rfc3339(epoch: i64) -> Result<String> {
    let t = chrono::DateTime::from_timestamp(epoch, 0)
        .with_context(|| format!("source_date_epoch {epoch} is out of range"))?;
    Ok(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The SPDX licence list version the identifiers come from (`3.26`).
fn list_version() -> String {
    let v = ::spdx::identifiers::VERSION;
    v.strip_suffix(".0").unwrap_or(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str) -> DebPackage {
        DebPackage {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            source: name.into(),
            source_version: version.into(),
            licence: None,
            deb_sha256: None,
            deb_file: None,
        }
    }

    #[test]
    fn purls_are_percent_encoded() {
        assert_eq!(purl(&pkg("libstdc++6", "1:14.2.0-19")), "pkg:deb/debian/libstdc%2B%2B6@1%3A14.2.0-19?arch=amd64");
        assert_eq!(purl(&pkg("bash", "5.2.37-2~bpo1")), "pkg:deb/debian/bash@5.2.37-2~bpo1?arch=amd64");
    }

    #[test]
    fn ids_are_valid_and_unique() {
        let mut ids = BTreeSet::new();
        assert_eq!(unique_id(&mut ids, &pkg("libstdc++6", "1")), "SPDXRef-deb-libstdcplusplus6-amd64");
        assert_eq!(unique_id(&mut ids, &pkg("libstdc++6", "2")), "SPDXRef-deb-libstdcplusplus6-amd64-2");
    }

    #[test]
    fn created_is_the_epoch() {
        assert_eq!(rfc3339(1735689600).unwrap(), "2025-01-01T00:00:00Z");
        let date = crate::host::cmd::Cmd::new("date")
            .args(["-u", "-d", "@315532800", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .unwrap();
        assert_eq!(rfc3339(315532800).unwrap(), date.trim());
    }
}
