//! Changes to the bootstrapped root: system settings, overlays and templates, artifacts,
//! first-boot actions, units, and the final clean-up.
pub mod apt;
pub mod artifacts;
pub mod cleanup;
pub mod firstboot;
pub mod overlay;
pub mod owners;
pub mod site;
pub mod system;
pub mod template;
mod template_child;
