//! Everything written beside the image once it is assembled: the other formats, the
//! manifest, the SPDX SBOM, `SHA256SUMS` over all of them, and its minisign signature.
//! Hashes are taken while files are written; the image is read once per extra format.
pub mod checksums;
pub mod export;
pub mod manifest;
pub mod sbom;
pub mod sign;
use crate::disk::ImageDigest;
use crate::image::boot::BootInfo;
use crate::plan::Plan;
use crate::release::manifest::{KeyInfo, Manifest};
use anyhow::{Context, Result};
use checksums::{Entry, SUMS_FILE};
use export::{OutputFormat, Staging};
use sbom::Inventory;
use sign::Signer;

/// What the outputs are made from.
pub struct Inputs<'a> {
    pub plan: &'a Plan,
    pub boot: &'a BootInfo,
    pub digest: &'a ImageDigest,
    pub inventory: &'a Inventory,
    /// Formats to write (`img` is already staged).
    pub formats: &'a [OutputFormat],
    pub signer: Option<&'a Signer>,
}

/// Stage every output besides the image (which must already be staged under
/// `plan.image_name`). Returns the `SHA256SUMS` entries.
pub fn write_outputs(staging: &mut Staging, i: &Inputs) -> Result<Vec<Entry>> {
    let image = &i.plan.image_name;
    let stem = export::stem(image).to_string();
    let raw = staging.staged(image).context("internal error: the image is not staged")?.to_path_buf();
    let mut sums = vec![Entry { sha256: i.digest.sha256.clone(), file: image.clone() }];
    for &format in i.formats {
        let name = export::file_name(image, format);
        let sha256 = match format {
            OutputFormat::Img => continue,
            OutputFormat::Zst => staging.write(&name, |tmp| export::compress_zst(&raw, tmp))?.0,
            OutputFormat::Qcow2 => {
                staging
                    .write(&name, |tmp| {
                        export::convert_qcow2(&raw, tmp)?;
                        checksums::hash_file(tmp)
                    })?
                    .0
            }
        };
        tracing::info!("wrote {name} (sha256 {sha256})");
        sums.push(Entry { sha256, file: name });
    }

    // The block map of the raw image, for `kiln flash` and `bmaptool copy` (made while the image
    // was written).
    sums.push(stage_text(staging, &export::bmap_name(&stem), &i.digest.bmap.to_xml())?);

    let key = i.signer.map(|s| KeyInfo { key_id: s.key_id(), public_key: s.public_key() });
    let manifest = Manifest::new(i.plan, i.boot, &i.plan.layout, i.digest, key)?.to_json()?;
    sums.push(stage_text(staging, &export::manifest_name(&stem), &manifest)?);

    let r = &i.plan.recipe;
    let facts = sbom::spdx::ImageFacts {
        name: &r.name,
        version: &r.version,
        image_file: image,
        image_sha256: &i.digest.sha256,
        recipe_hash: &i.plan.recipe_hash,
        source_date_epoch: r.source_date_epoch,
    };
    let sbom = sbom::spdx::document(&facts, i.inventory)?;
    sums.push(stage_text(staging, &export::sbom_name(&stem), &sbom)?);

    let sums_text = checksums::render(&sums);
    staging.write_bytes(SUMS_FILE, sums_text.as_bytes())?;
    let sig_name = format!("{SUMS_FILE}{}", sign::SIG_SUFFIX);
    match i.signer {
        Some(signer) => {
            let comment = trusted_comment(i.plan);
            let sig = signer
                .sign(sums_text.as_bytes(), &comment)
                .with_context(|| format!("signing {SUMS_FILE} with {}", signer.path.display()))?;
            staging.write_bytes(&sig_name, sig.as_bytes())?;
        }
        // A signature left from an earlier signed build would not match the new checksums.
        None => staging.remove_on_commit(&sig_name),
    }
    Ok(sums)
}

fn stage_text(staging: &mut Staging, name: &str, text: &str) -> Result<Entry> {
    staging.write_bytes(name, text.as_bytes())?;
    Ok(Entry { sha256: crate::host::files::sha256_hex(text.as_bytes()), file: name.to_string() })
}

/// The signed comment: deterministic facts only (minisign's default is the current time).
pub fn trusted_comment(plan: &Plan) -> String {
    format!(
        "timestamp:{}\tfile:{SUMS_FILE}\timage:{}\trecipe-sha256:{}",
        plan.recipe.source_date_epoch, plan.image_name, plan.recipe_hash
    )
}
