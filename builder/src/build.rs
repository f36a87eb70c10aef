//! `envbuild build`: environment file → base + canonical layers (cached by input key) → config
//! and manifest → OCI layout or docker archive. Everything is written under temporary names and
//! renamed, so a failed build leaves neither a half-written output nor a half-written cache entry.

use std::path::PathBuf;

use thiserror::Error;

use crate::cache::{layer_key, Cache};
use crate::digest::Digest;
use crate::image::linkcheck::{self, ImageFs, LinkError};
use crate::image::{self, Additions, BaseImage, Image, ImageError, LayerDesc};
use crate::layer::{self, LayerError, Mapping, TarSettings, Tree};
use crate::progress::Kind;
use crate::spec::{Base, Environment};

/// Why a build failed.
#[derive(Debug, Error)]
pub enum BuildError {
    #[error("{file}:{line}: layer `{layer}`: {source}")]
    Layer {
        file: String,
        line: usize,
        layer: String,
        #[source]
        source: Box<LayerError>,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cache {}: {source}", path.display())]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error("base image")]
    Pull(#[from] crate::registry::RegistryError),
    #[error("base image")]
    BadBase(#[from] crate::registry::BadReference),
    #[error("{file}: the image would have nothing to run: neither [config] nor the base image gives an entrypoint or cmd")]
    NothingToRun { file: String },
    #[error("{file}: the SBOM: {message}")]
    Sbom { file: String, message: String },
}

impl crate::error::Hint for BuildError {
    fn hint(&self) -> Option<std::borrow::Cow<'_, str>> {
        // Only the transparent variants: the others keep their cause in the chain.
        match self {
            BuildError::Link(e) => e.hint(),
            BuildError::NothingToRun { .. } => Some("set `entrypoint = [\"/path/in/image\", ...]` (or `cmd`) in the file's [config] table".into()),
            _ => None,
        }
    }
}

/// Settings that do not change the image.
#[derive(Debug, Clone)]
pub struct Settings {
    pub threads: usize,
    /// Seconds since the epoch for every timestamp (SOURCE_DATE_EPOCH, default 0).
    pub source_date_epoch: u64,
    /// Skip the link check (for entrypoints it cannot judge, e.g. statically odd loaders).
    pub skip_link_check: bool,
    /// How to reach the registry of a base image given by reference.
    pub registry: crate::registry::Settings,
    /// The SBOM's format (SPDX 2.3 by default, or CycloneDX 1.6).
    pub sbom_format: crate::sbom::Format,
}

/// Messages and progress, for a reporter that shows them (the library never prints).
pub trait Reporter {
    fn message(&mut self, text: &str);
    /// Where byte progress of long work goes (compression, transfers, waits); nowhere unless
    /// the reporter shows it.
    fn progress(&self) -> &dyn crate::progress::Progress {
        &crate::progress::Hidden
    }
}

/// A reporter that drops everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Reporter for Quiet {
    fn message(&mut self, _: &str) {}
}

/// One built layer and whether it came from the cache.
#[derive(Debug, Clone)]
pub struct BuiltLayer {
    pub name: String,
    pub desc: LayerDesc,
    pub cached: bool,
    pub files: usize,
    pub bytes: u64,
    /// The key over the layer's inputs (paths, modes, content digests), when it has one.
    pub key: Option<Digest>,
    /// The content digest of each regular file, by its path in the image.
    pub contents: layer::ContentDigests,
}

/// The result of a build.
#[derive(Debug, Clone)]
pub struct Built {
    pub image: Image,
    pub layers: Vec<BuiltLayer>,
    pub base: BaseImage,
    /// The SBOM first, then the provenance statement: artifacts whose subject is the image.
    pub attachments: Vec<image::attach::Attachment>,
}

/// Gathers one layer's tree.
pub fn layer_tree(env: &Environment, l: &crate::spec::Layer) -> Result<Tree, BuildError> {
    let mut tree = Tree::default();
    for f in &l.files {
        let m = Mapping {
            src: f.src.clone(),
            dest: f.dest.clone(),
            mode: f.mode,
            include: f.include.clone(),
            exclude: f.exclude.clone(),
        };
        tree.add(&m).map_err(|source| BuildError::Layer {
            file: env.file.display().to_string(),
            line: f.line,
            layer: l.name.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(tree)
}

/// Loads the environment file at `path` and builds it: what push, run and register do with a
/// file they are given.
pub fn build_file(
    path: &std::path::Path,
    cache: &Cache,
    settings: &Settings,
    rep: &mut dyn Reporter,
) -> Result<(Environment, Built), BuildError> {
    let env = crate::spec::load_file(path)?;
    let built = build(&env, cache, settings, rep)?;
    Ok((env, built))
}

/// Builds the image of `env` into the cache; outputs are written by the caller.
pub fn build(
    env: &Environment,
    cache: &Cache,
    settings: &Settings,
    rep: &mut dyn Reporter,
) -> Result<Built, BuildError> {
    // Gather every layer first: a missing source fails before anything is compressed.
    let trees: Vec<Tree> = env
        .layers
        .iter()
        .map(|l| layer_tree(env, l))
        .collect::<Result<_, _>>()?;
    let base = match &env.base {
        Base::Scratch => BaseImage::scratch(),
        Base::Oci { dir, digest } => image::load_oci(dir, *digest, &env.os, &env.architecture)?,
        Base::DockerArchive { file, digest } => image::load_docker_archive(file, *digest, cache)?,
        Base::Registry { reference, digest } => {
            let r: crate::registry::Reference = reference.parse()?;
            let creds = crate::auth::for_pull(&r.registry);
            let client = crate::registry::Client::new(&r, creds, &settings.registry)?;
            rep.message(&format!("base {reference}: pulling into the cache"));
            let p = crate::registry::pull(
                &client,
                digest,
                &env.os,
                &env.architecture,
                cache,
                rep.progress(),
            )?;
            image::base_from_pulled(reference, p.digest, &p.manifest, p.config, cache)?
        }
    };
    let runs = |v: Option<&Vec<String>>| v.is_some_and(|a| !a.is_empty());
    // The base's config is read only when the file gives nothing to run.
    if env.config.entrypoint.is_empty()
        && env.config.cmd.is_empty()
        && !base_run_config(&base)?
            .is_some_and(|c| runs(c.entrypoint().as_ref()) || runs(c.cmd().as_ref()))
    {
        return Err(BuildError::NothingToRun {
            file: env.file.display().to_string(),
        });
    }
    if !settings.skip_link_check {
        link_check(env, &base, &trees, rep)?;
    }
    base.import(cache)?;
    let cache_err = |source| BuildError::Cache {
        path: cache.root.clone(),
        source,
    };
    let tar_opts = TarSettings {
        mtime: settings.source_date_epoch,
    };
    let identity = env.compression.identity();
    let mut stamps = cache.stamps();
    let mut layers = Vec::new();
    for (l, tree) in env.layers.iter().zip(&trees) {
        let files = tree.nodes.len();
        let bytes = tree.content_size();
        // All contents known from unchanged files → the key, and perhaps a cached layer.
        let known: Option<std::collections::BTreeMap<String, Digest>> = tree
            .nodes
            .iter()
            .filter_map(|(p, n)| match n {
                layer::Node::File { src, .. } => Some(stamps.get(src).map(|d| (p.clone(), d))),
                _ => None,
            })
            .collect();
        if let Some((key, known)) = known
            .as_ref()
            .and_then(|k| Some((layer_key(tree, k, tar_opts, &identity)?, k)))
        {
            if let Some(blob) = cache.layer(&key) {
                rep.message(&format!("layer {:<12} cached  {}", l.name, blob.digest));
                layers.push(BuiltLayer {
                    name: l.name.clone(),
                    desc: desc(&blob),
                    cached: true,
                    files,
                    bytes,
                    key: Some(key),
                    contents: known.clone(),
                });
                continue;
            }
        }
        rep.message(&format!(
            "layer {:<12} building: {files} entries, {:.1} MB",
            l.name,
            bytes as f64 / 1e6
        ));
        let start = std::time::Instant::now();
        let tmp = cache.temp_file().map_err(cache_err)?;
        let out = std::io::BufWriter::with_capacity(
            1 << 20,
            tmp.as_file().try_clone().map_err(cache_err)?,
        );
        let task = rep
            .progress()
            .task(Kind::Compress, &format!("layer {}", l.name), Some(bytes));
        let (blob, contents) = layer::build(
            tree,
            tar_opts,
            env.compression,
            settings.threads,
            out,
            &task,
        )
        .map_err(|source| BuildError::Layer {
            file: env.file.display().to_string(),
            line: l.line,
            layer: l.name.clone(),
            source: Box::new(source),
        })?;
        cache.commit_blob(tmp, &blob.digest).map_err(cache_err)?;
        for (p, n) in &tree.nodes {
            if let (layer::Node::File { src, .. }, Some(d)) = (n, contents.get(p)) {
                stamps.remember(src, *d);
            }
        }
        let key = layer_key(tree, &contents, tar_opts, &identity);
        if let Some(key) = &key {
            cache.put_layer(key, &blob).map_err(cache_err)?;
        }
        let secs = start.elapsed().as_secs_f64();
        task.finish(&format!("built {:.1} MB", blob.size as f64 / 1e6));
        rep.message(&format!(
            "layer {:<12} built   {} ({:.1} MB, {:.1}s, {:.0} MB/s)",
            l.name,
            blob.digest,
            blob.size as f64 / 1e6,
            secs,
            bytes as f64 / 1e6 / secs.max(1e-9)
        ));
        layers.push(BuiltLayer {
            name: l.name.clone(),
            desc: desc(&blob),
            cached: false,
            files,
            bytes,
            key,
            contents,
        });
    }
    cache.save_stamps(&stamps).map_err(cache_err)?;
    let add = Additions {
        os: env.os.clone(),
        architecture: env.architecture.clone(),
        created: settings.source_date_epoch,
        layers: layers
            .iter()
            .map(|l| (l.name.clone(), l.desc.clone()))
            .collect(),
        config: env.config.clone(),
    };
    let image = image::assemble(&base, &add);
    cache.put_bytes(&image.config).map_err(cache_err)?;
    cache.put_bytes(&image.manifest).map_err(cache_err)?;
    let attachments = documents(env, &base, &trees, &layers, &image, cache, settings, rep)?;
    Ok(Built {
        image,
        layers,
        base,
        attachments,
    })
}

/// The SBOM and the provenance statement of the image, attached to it in the cache.
#[allow(clippy::too_many_arguments)]
fn documents(
    env: &Environment,
    base: &BaseImage,
    trees: &[Tree],
    layers: &[BuiltLayer],
    image: &Image,
    cache: &Cache,
    settings: &Settings,
    rep: &mut dyn Reporter,
) -> Result<Vec<image::attach::Attachment>, BuildError> {
    use crate::sbom::{self, Inventory, LayerEntry};
    let file = env.file.display().to_string();
    let sbom_err = |message: String| BuildError::Sbom {
        file: file.clone(),
        message,
    };
    let cache_err = |source| BuildError::Cache {
        path: cache.root.clone(),
        source,
    };
    // Debian packages: the base's layers, then the new layers' files (a base image built by
    // envbuild has its dpkg status in a layer of its own). None from scratch without a status;
    // unknown (said so) when there are files but no status.
    // The base's part is kept in the cache by its layers' digests: a warm build does not
    // decompress the base again (the link check already did, once).
    let memo_key = Digest::of(
        base.layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect::<Vec<_>>()
            .join(" ")
            .as_bytes(),
    );
    let mut debs = match cache
        .memo("dpkg", &memo_key)
        .and_then(|b| sbom::dpkg::Collector::from_memo(&b))
    {
        Some(c) => c,
        None => {
            let mut c = sbom::dpkg::Collector::default();
            for p in &base.blobs {
                let f = std::fs::File::open(p).map_err(|source| ImageError::Io {
                    path: p.clone(),
                    source,
                })?;
                c.add_tar(f).map_err(|e| {
                    sbom_err(format!("reading the base layer {}: {e}", p.display()))
                })?;
            }
            cache
                .put_memo("dpkg", &memo_key, &c.to_memo())
                .map_err(cache_err)?;
            c
        }
    };
    for t in trees {
        for (path, n) in &t.nodes {
            if let layer::Node::File { src, .. } = n {
                debs.add_file(path, src)
                    .map_err(|e| sbom_err(format!("reading {}: {e}", src.display())))?;
            }
        }
    }
    let scan = debs.finish();
    let debs = if scan.found_status || base.blobs.is_empty() {
        Some(scan.packages)
    } else {
        rep.message(&format!(
            "warning: the base {} has no dpkg status (var/lib/dpkg/status): its Debian packages are unknown, and the SBOM says so",
            base.name
        ));
        None
    };
    let named: Vec<(&str, &Tree)> = env
        .layers
        .iter()
        .zip(trees)
        .map(|(l, t)| (l.name.as_str(), t))
        .collect();
    let (python, warnings) = sbom::python::scan(&named);
    for w in warnings {
        rep.message(&format!("warning: {w}"));
    }
    let binary = match &env.sbom.cargo_lock {
        None => None,
        Some(lock) => {
            let path = env
                .sbom
                .binary
                .clone()
                .or_else(|| env.config.entrypoint.first().cloned())
                .ok_or_else(|| sbom_err("sbom.cargo-lock is set but neither sbom.binary nor an entrypoint names the binary".into()))?;
            let rel = path.trim_start_matches('/').to_owned();
            let (layer, digest) = layers
                .iter()
                .rev()
                .find_map(|l| l.contents.get(&rel).map(|d| (l.name.clone(), *d)))
                .ok_or_else(|| {
                    sbom_err(format!("the binary {path} is in none of the file's layers"))
                })?;
            let package = env
                .sbom
                .cargo_package
                .clone()
                .unwrap_or_else(|| rel.rsplit('/').next().unwrap_or(&rel).to_owned());
            let crates =
                sbom::cargo::crates_of(lock, &package).map_err(|e| sbom_err(e.to_string()))?;
            Some(sbom::Binary {
                path,
                digest,
                layer,
                crates,
            })
        }
    };
    let base_count = image.layers.len() - layers.len();
    let entries: Vec<LayerEntry> = image
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| LayerEntry {
            name: match i.checked_sub(base_count) {
                Some(k) => layers[k].name.clone(),
                None => format!("base-{i}"),
            },
            digest: d.digest,
            size: d.size,
        })
        .collect();
    let base_ref =
        (!base.blobs.is_empty() || base.digest.is_some()).then(|| (base.name.clone(), base.digest));
    let inv = Inventory {
        name: env.name.clone(),
        image: image.digest,
        created: settings.source_date_epoch,
        base: base_ref.clone(),
        layers: entries,
        debs,
        python,
        binary,
    };
    let (doc, media_type) = match settings.sbom_format {
        sbom::Format::Spdx => (sbom::spdx::document(&inv), sbom::SPDX_JSON),
        sbom::Format::CycloneDx => (sbom::cyclonedx::document(&inv), sbom::CYCLONEDX_JSON),
    };
    // The file's name, not its path: the same file in another checkout is the same input.
    let env_name = env
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| file.clone());
    let statement = sbom::provenance::statement(&sbom::provenance::Provenance {
        name: &env.name,
        image: image.digest,
        env_file: &env_name,
        env_digest: env.digest,
        base: base_ref,
        layer_inputs: layers
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.key?)))
            .collect(),
        source_date_epoch: settings.source_date_epoch,
        compression: format!("{:?}", env.compression),
    });
    let epoch = settings.source_date_epoch;
    Ok(vec![
        image::attach::attach(cache, image, media_type, &doc, epoch).map_err(cache_err)?,
        image::attach::attach(cache, image, sbom::IN_TOTO_JSON, &statement, epoch)
            .map_err(cache_err)?,
    ])
}

/// The base image's run config (entrypoint, cmd, env), typed; none for an empty config
/// (`scratch`).
fn base_run_config(base: &BaseImage) -> Result<Option<oci_spec::image::Config>, BuildError> {
    if base.config.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(None);
    }
    Ok(
        image::typed_config(std::path::Path::new(&base.name), &base.config)?
            .config()
            .clone(),
    )
}

/// Runs the link check over the image's merged file system, before anything is compressed.
fn link_check(
    env: &Environment,
    base: &BaseImage,
    trees: &[Tree],
    rep: &mut dyn Reporter,
) -> Result<(), BuildError> {
    let mut fs = ImageFs::default();
    for p in &base.blobs {
        let f = std::fs::File::open(p).map_err(|e| ImageError::Io {
            path: p.clone(),
            source: e,
        })?;
        fs.add_layer_tar(f).map_err(|e| ImageError::Io {
            path: p.clone(),
            source: e,
        })?;
    }
    const SHOWN: usize = 5;
    for e in fs.escapes.iter().take(SHOWN) {
        rep.message(&format!(
            "warning: base layer entry {e} reaches out of the image root; engines refuse or rewrite it"
        ));
    }
    if fs.escapes.len() > SHOWN {
        rep.message(&format!(
            "warning: {} more base layer entries reach out of the image root",
            fs.escapes.len() - SHOWN
        ));
    }
    for t in trees {
        fs.add_tree(t);
    }
    let entrypoint = env
        .config
        .entrypoint
        .first()
        .or_else(|| env.config.cmd.first());
    if entrypoint.is_none() && env.dlopen.is_empty() && env.python_extensions.is_empty() {
        rep.message("link check: no entrypoint or cmd in the environment file; nothing to check");
        return Ok(());
    }
    let base_env = base_run_config(base)?
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    let base_ld = base_env
        .iter()
        .filter_map(|e| e.strip_prefix("LD_LIBRARY_PATH="))
        .next_back()
        .unwrap_or("");
    let ld = env
        .config
        .env
        .get("LD_LIBRARY_PATH")
        .map_or(base_ld, String::as_str);
    let say = |rep: &mut dyn Reporter, what: &str, report: &linkcheck::LinkReport| {
        rep.message(&format!(
            "link check: {what} resolves with {} shared objects{}",
            report.objects.len().saturating_sub(1),
            unchecked_note(report.unchecked.iter())
        ))
    };
    if let Some(entrypoint) = entrypoint {
        let report = linkcheck::check(&fs, entrypoint, ld, &env.architecture)?;
        for w in &report.warnings {
            rep.message(&format!("warning: {w}"));
        }
        say(rep, entrypoint, &report);
    } else {
        rep.message("link check: no entrypoint or cmd in the environment file");
    }
    // What the program dlopens (libtorch_cuda.so, and through it NCCL and the CUDA libraries)
    // is not in the entrypoint's DT_NEEDED: each is a root of its own.
    for lib in &env.dlopen {
        let report = linkcheck::check(&fs, lib, ld, &env.architecture).map_err(|mut e| {
            if e.entrypoint_missing {
                e.problems = vec![format!("{lib} is not in the image")];
            }
            e.root = linkcheck::Root::Dlopen(lib.clone());
            e
        })?;
        say(rep, &format!("{lib} (dlopen)"), &report);
    }
    // What Python imports: every extension module under each directory, and all it needs.
    for dir in &env.python_extensions {
        let report = linkcheck::check_python_extensions(&fs, dir, ld, &env.architecture)?;
        if report.modules.is_empty() {
            rep.message(&format!(
                "warning: link check: no Python extension modules (*.so exporting PyInit_*) under {dir} ([link-check] python-extensions)"
            ));
            continue;
        }
        rep.message(&format!(
            "link check: {} Python extension modules under {dir} resolve with {} shared objects{}",
            report.modules.len(),
            report.objects.len(),
            unchecked_note(report.unchecked.iter())
        ));
    }
    Ok(())
}

fn desc(b: &layer::LayerBlob) -> LayerDesc {
    LayerDesc {
        media_type: b.media_type.clone(),
        digest: b.digest,
        size: b.size,
        diff_id: b.diff_id,
    }
}

/// ` (N present but not inspected: a, b)` after a link check's line, or nothing.
fn unchecked_note<'a>(unchecked: impl ExactSizeIterator<Item = &'a String>) -> String {
    if unchecked.len() == 0 {
        return String::new();
    }
    let n = unchecked.len();
    let names: Vec<&str> = unchecked.map(String::as_str).collect();
    format!(" ({n} present but not inspected: {})", names.join(", "))
}
