//! `kiln site check`: a site file against exactly the site variables one image (its manifest)
//! or one recipe declares, before anything is written to a disk.
use crate::recipe::site::{self, Site};
use crate::recipe::sitevars::SiteVar;
use crate::release::export;
use crate::release::manifest::Manifest;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What the site file is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Against<'a> {
    /// A built image (`.img`, `.img.zst`, `.qcow2`) with its manifest beside it, or the manifest.
    Image(&'a Path),
    /// A recipe, with the layers it includes.
    Recipe(&'a Path),
}

/// A site file that passed, with every variable's value (the site's or the default).
#[derive(Debug, Serialize)]
pub struct SiteReport {
    pub site: PathBuf,
    /// The manifest or recipe whose declarations were used.
    pub against: PathBuf,
    /// `NAME VERSION` of the image or recipe.
    pub image: String,
    pub declared: Vec<SiteVar>,
    pub settings: Site,
}

/// Check `site_file` against the declarations of `against`. A bad site file is a `RecipeError`.
pub fn check(site_file: &Path, against: Against) -> Result<SiteReport> {
    let (path, image, declared) = match against {
        Against::Image(image) => {
            let path = manifest_of(image);
            let m = Manifest::read(&path).context("reading the image's site variables from its manifest")?;
            (path, format!("{} {}", m.recipe.name, m.recipe.version), m.site_vars)
        }
        Against::Recipe(recipe) => {
            let r = crate::recipe::load(recipe)?;
            (recipe.to_path_buf(), format!("{} {}", r.name, r.version), r.site_vars)
        }
    };
    let settings = site::load(site_file)?.check(&declared)?;
    Ok(SiteReport { site: site_file.to_path_buf(), against: path, image, declared, settings })
}

/// The full check of a `--site` file before `kiln boot` or `kiln test` attaches it: against the
/// image's manifest when one is beside it (exactly what `kiln site check --image` does), else
/// (a device, a renamed image) every value of the file on its own.
pub fn check_for_boot(site_file: &Path, image: &Path) -> Result<()> {
    if manifest_of(image).is_file() {
        check(site_file, Against::Image(image))?;
    } else {
        site::load(site_file)?;
    }
    Ok(())
}

/// The manifest `kiln build` wrote beside `image` (or `image` itself when it is one).
fn manifest_of(image: &Path) -> PathBuf {
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.ends_with(".manifest.json") {
        return image.to_path_buf();
    }
    image.with_file_name(export::manifest_name(export::stem(&name)))
}
