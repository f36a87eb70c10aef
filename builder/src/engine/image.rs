//! Making sure the engine has the image to run: an environment file is built (from the cache)
//! and loaded when the engine lacks its config ID; a registry reference is resolved to its
//! digest (a tag is asked of the registry) and pulled by digest when missing, with the
//! credentials `auth` decides (an Entra identity exchanged first for a token the engine can use).

use std::path::{Path, PathBuf};

use thiserror::Error;

use super::run::engine_credentials;
use super::{Blocking, EngineError};
use crate::auth::{self, Credentials};
use crate::build::{self, BuildError, Reporter};
use crate::cache::Cache;
use crate::image::{write_docker_archive, Image, ImageError};
use crate::progress::Kind;
use crate::registry::{BadReference, Client, Reference, RegistryError};
use crate::spec::Environment;

/// What to run: an environment file, an image `build` wrote (`oci:DIR`, `docker-archive:FILE`),
/// or an image in a registry — every source the other commands take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Layout(PathBuf),
    Archive(PathBuf),
    Reference(Reference),
}

impl Source {
    /// `oci:DIR` and `docker-archive:FILE` as `build --output` writes them; an existing file or
    /// a name ending in `.toml` is an environment file; anything else must be an image reference.
    pub fn parse(s: &str) -> Result<Source, EnsureError> {
        if let Some(dir) = s.strip_prefix("oci:") {
            return Ok(Source::Layout(dir.into()));
        }
        if let Some(file) = s.strip_prefix("docker-archive:") {
            return Ok(Source::Archive(file.into()));
        }
        if Path::new(s).is_file() || s.ends_with(".toml") {
            return Ok(Source::File(s.into()));
        }
        s.parse()
            .map(Source::Reference)
            .map_err(|source| EnsureError::Source {
                text: s.to_owned(),
                source,
            })
    }
}

/// Why the image could not be made available.
#[derive(Debug, Error)]
pub enum EnsureError {
    #[error("{text}: neither an environment file nor an image reference")]
    Source {
        text: String,
        #[source]
        source: BadReference,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("temporary directory in the cache {}: {source}", path.display())]
    Temp {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Hint for EnsureError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            EnsureError::Build(e) => e.hint(),
            EnsureError::Registry(e) => e.hint(),
            _ => None,
        }
    }
}

/// Makes sure the engine has the image of `source` and returns the name to run it by: for an
/// environment file, the built config's ID; for a reference, `REPO@DIGEST`.
pub fn ensure_image(
    engine: &Blocking,
    source: &Source,
    cache: &Cache,
    settings: &build::Settings,
    rep: &mut dyn Reporter,
) -> Result<String, EnsureError> {
    match source {
        Source::File(path) => {
            let (env, built) = build::build_file(path, cache, settings, rep)?;
            let id = built.image.config_digest.to_string();
            if engine.has_image(&id)? {
                rep.message(&format!("the engine has {id} already"));
            } else {
                load(
                    engine,
                    &env,
                    &built.image,
                    cache,
                    settings.source_date_epoch,
                    rep,
                )?;
            }
            Ok(id)
        }
        Source::Layout(dir) => {
            let image = crate::image::pushable_from_oci(dir)?;
            let id = image.blobs[0].0.to_string();
            if engine.has_image(&id)? {
                rep.message(&format!("the engine has {id} already"));
                return Ok(id);
            }
            let repo_tag = format!("envbuild/layout:{}", &image.blobs[0].0.hex()[..12]);
            let (_dir, archive) = temp_archive(cache)?;
            crate::image::docker_archive_from_pushable(
                &image,
                &archive,
                &repo_tag,
                settings.source_date_epoch,
            )?;
            load_file(engine, &archive, &repo_tag, rep)?;
            Ok(id)
        }
        Source::Archive(file) => {
            let id = crate::image::inspect::archive_image_id(file)?.to_string();
            if engine.has_image(&id)? {
                rep.message(&format!("the engine has {id} already"));
            } else {
                load_file(engine, file, &file.display().to_string(), rep)?;
            }
            Ok(id)
        }
        Source::Reference(reference) => pull(engine, reference, &settings.registry, rep),
    }
}

/// A path for a docker archive in a temporary directory of the cache (removed with the
/// returned guard).
fn temp_archive(cache: &Cache) -> Result<(tempfile::TempDir, PathBuf), EnsureError> {
    let tmp = cache.root.join("tmp");
    let dir = tempfile::tempdir_in(&tmp).map_err(|source| EnsureError::Temp {
        path: tmp.clone(),
        source,
    })?;
    let archive = dir.path().join("image.tar");
    Ok((dir, archive))
}

/// `docker load` of the archive at `file` (called `name` in the messages).
fn load_file(
    engine: &Blocking,
    file: &Path,
    name: &str,
    rep: &mut dyn Reporter,
) -> Result<(), EnsureError> {
    let wait = rep
        .progress()
        .task(Kind::Wait, &format!("loading {name} into the engine"), None);
    let said = engine.load_archive(file)?;
    wait.finish("loaded");
    for l in said {
        rep.message(&l);
    }
    rep.message(&format!(
        "loaded {name} into the Docker engine at {}",
        engine.address()
    ));
    Ok(())
}

/// The image by digest from its registry into the engine, unless the engine has it.
fn pull(
    engine: &Blocking,
    reference: &Reference,
    settings: &crate::registry::Settings,
    rep: &mut dyn Reporter,
) -> Result<String, EnsureError> {
    // Docker's config, else Entra ID for ACR; an Entra identity is exchanged for the ACR
    // refresh token that the engine can use.
    let creds = match auth::for_pull(&reference.registry) {
        Some(Credentials::Entra) => {
            Client::new(reference, Some(Credentials::Entra), settings)?.login()?
        }
        c => c,
    };
    let digest = match &reference.digest {
        Some(d) => d.to_string(),
        None => {
            let client = Client::new(reference, creds.clone(), settings)?;
            let tag = reference.tag.clone().unwrap_or_else(|| "latest".into());
            let (_, _, d) = client.get_manifest(&tag)?;
            rep.message(&format!("{reference} is {d}"));
            d.to_string()
        }
    };
    let name = format!("{}/{}@{digest}", reference.registry, reference.repository);
    if !engine.has_image(&name)? {
        rep.message(&format!("pulling {name} into the Docker engine"));
        let creds = creds.map(|c| engine_credentials(&c, &reference.registry));
        let wait = rep
            .progress()
            .task(Kind::Wait, "the engine pulls the image", None);
        engine.pull(&name, creds)?;
        wait.finish("pulled");
    }
    Ok(name)
}

/// Streams the image as a docker archive into the engine (through a temporary file in the
/// cache), tagged `envbuild/NAME:TAG`.
pub fn load(
    engine: &Blocking,
    env: &Environment,
    image: &Image,
    cache: &Cache,
    mtime: u64,
    rep: &mut dyn Reporter,
) -> Result<(), EnsureError> {
    let repo_tag = &repo_tag(env);
    let (_dir, archive) = temp_archive(cache)?;
    write_docker_archive(image, cache, &archive, repo_tag, mtime)?;
    load_file(engine, &archive, repo_tag, rep)
}

/// The name a built environment gets in the engine and in docker archives: `envbuild/NAME:TAG`
/// (`latest` without a publish tag).
pub fn repo_tag(env: &Environment) -> String {
    let tag = env.publish.tag.as_deref().unwrap_or("latest");
    format!("envbuild/{}:{tag}", env.name)
}
