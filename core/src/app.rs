//! APPS
//!
//! An app is a node of the graph. The engine calls, each breath:
//!
//!   pull(io)    bring packets in from outside (only if `has_pull`)
//!   push(io)    process the packets on the input links
//!
//! and, less often, `tick` (at the engine's tick rate), `link` (ports
//! changed), `stop`, `report` and `counters`. Ports are named; `io.input`
//! and `io.output` list the links attached to this app by port name.
//!
//! An app *class* ([`AppClass`]) says how to make an app from arguments
//! parsed out of the config, and optionally how to take new arguments
//! without a restart. Classes are put in a [`Registry`] by name; any crate
//! can add its own.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::rc::Rc;

use serde::de::DeserializeOwned;

use crate::config::{Args, Config, ConfigError};
use crate::link::Link;

/// One named port and the link on it.
#[derive(Clone)]
pub struct Port {
    pub name: String,
    pub link: Rc<Link>,
}

/// The input or output ports of an app, sorted by name.
#[derive(Clone, Default)]
pub struct Ports {
    ports: Vec<Port>,
}

impl Ports {
    pub fn new(mut ports: Vec<Port>) -> Ports {
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        Ports { ports }
    }
    /// The link on port `name`, if one is attached.
    #[inline]
    pub fn get(&self, name: &str) -> Option<&Link> {
        self.ports.iter().find(|p| p.name == name).map(|p| &*p.link)
    }
    /// The link at position `i` (ports sorted by name).
    #[inline]
    pub fn at(&self, i: usize) -> &Link {
        &self.ports[i].link
    }
    /// The position of port `name`, to resolve names once in `App::link`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.name == name)
    }
    pub fn first(&self) -> Option<&Link> {
        self.ports.first().map(|p| &*p.link)
    }
    #[inline]
    pub fn len(&self) -> usize {
        self.ports.len()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Link> {
        self.ports.iter().map(|p| &*p.link)
    }
    pub fn named(&self) -> impl Iterator<Item = (&str, &Link)> {
        self.ports.iter().map(|p| (p.name.as_str(), &*p.link))
    }
    /// Same port names on the same links.
    pub(crate) fn same_as(&self, other: &Ports) -> bool {
        self.ports.len() == other.ports.len()
            && self.ports.iter().zip(&other.ports).all(|(a, b)| a.name == b.name && Rc::ptr_eq(&a.link, &b.link))
    }
}

/// An app's view of the graph: its input and output ports.
#[derive(Clone, Default)]
pub struct Io {
    pub input: Ports,
    pub output: Ports,
}

/// Gives `&dyn Any` for any app, so that tests and programs can reach an
/// app's own type through the engine.
pub trait AsAny {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// A node of the app graph. Every method has a default that does nothing.
pub trait App: AsAny {
    /// True when the app brings packets in from outside the graph: the
    /// engine calls `pull` first in each breath, and such apps break cycles
    /// when the engine orders pushes.
    fn has_pull(&self) -> bool {
        false
    }
    /// Bring packets in (from a NIC, a socket, a generator) onto outputs.
    fn pull(&mut self, _io: &Io) {}
    /// Process packets waiting on the inputs.
    fn push(&mut self, _io: &Io) {}
    /// Periodic work, at the engine's tick rate (1 kHz by default).
    fn tick(&mut self, _io: &Io) {}
    /// The ports changed (the app started, or links were added or removed).
    fn link(&mut self, _io: &Io) {}
    /// The app is leaving the graph; release outside resources.
    fn stop(&mut self) {}
    /// A human-readable status, appended to `out`.
    fn report(&self, _out: &mut String) {}
    /// The app's counters, by name (committed to shared memory).
    fn counters(&self, _emit: &mut dyn FnMut(&str, u64)) {}
}

/// What an app is told when it is made.
pub struct AppContext<'a> {
    /// The app's name in the config.
    pub name: &'a str,
    pub class: &'a str,
}

/// A kind of app that can be made from config arguments.
pub trait AppClass: App + Sized + 'static {
    /// The arguments, parsed from RON (use `#[serde(deny_unknown_fields)]`).
    type Args: DeserializeOwned;

    fn new(args: Self::Args, ctx: &AppContext) -> anyhow::Result<Self>;

    /// Take new arguments without a restart. Return `Ok(false)` to have the
    /// engine stop this instance and start a new one instead (the default).
    fn reconfigure(&mut self, _args: Self::Args, _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(false)
    }
}

type Create = fn(&Args, &AppContext) -> Result<Box<dyn App>, AppFailure>;
type Check = fn(&Args) -> Result<(), ConfigError>;
type Reconfigure = fn(&mut dyn App, &Args, &AppContext) -> Result<bool, AppFailure>;

/// Why an app could not be made or reconfigured.
pub(crate) enum AppFailure {
    Args(ConfigError),
    App(anyhow::Error),
}

struct Class {
    create: Create,
    check: Check,
    reconfigure: Reconfigure,
    doc: &'static str,
}

fn create<C: AppClass>(args: &Args, ctx: &AppContext) -> Result<Box<dyn App>, AppFailure> {
    let a = args.parse::<C::Args>().map_err(AppFailure::Args)?;
    C::new(a, ctx).map(|app| Box::new(app) as Box<dyn App>).map_err(AppFailure::App)
}

fn check<C: AppClass>(args: &Args) -> Result<(), ConfigError> {
    args.parse::<C::Args>().map(drop)
}

fn reconfigure<C: AppClass>(app: &mut dyn App, args: &Args, ctx: &AppContext) -> Result<bool, AppFailure> {
    let a = args.parse::<C::Args>().map_err(AppFailure::Args)?;
    match app.as_any_mut().downcast_mut::<C>() {
        Some(app) => app.reconfigure(a, ctx).map_err(AppFailure::App),
        None => Ok(false),
    }
}

/// App classes by name.
#[derive(Default)]
pub struct Registry {
    classes: BTreeMap<String, Class>,
}

impl Registry {
    /// A registry with the engine's own hidden classes (interlink ends).
    pub fn new() -> Registry {
        let mut r = Registry::default();
        crate::worker::register(&mut r);
        r
    }

    /// Add class `C` under `name`, with a one-line description.
    pub fn register<C: AppClass>(&mut self, name: &str, doc: &'static str) -> &mut Registry {
        let old = self.classes.insert(
            name.to_string(),
            Class { create: create::<C>, check: check::<C>, reconfigure: reconfigure::<C>, doc },
        );
        assert!(old.is_none(), "app class `{name}` registered twice");
        self
    }

    /// Class names and descriptions.
    /// (The engine's hidden classes are not among them.)
    pub fn classes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.classes.iter().filter(|(k, _)| !hidden(k)).map(|(k, c)| (k.as_str(), c.doc))
    }

    pub fn contains(&self, class: &str) -> bool {
        self.classes.contains_key(class)
    }

    fn class(&self, config: &Config, app: &str, class: &str) -> Result<&Class, ConfigError> {
        self.classes.get(class).ok_or_else(|| {
            let mut known = String::new();
            for (i, k) in self.classes.keys().filter(|k| !hidden(k)).enumerate() {
                let _ = write!(known, "{}{k}", if i > 0 { ", " } else { "" });
            }
            config.app_error(app, format!("app `{app}`: no app class `{class}` (known: {known})"))
        })
    }

    /// Check a whole config: its shape, that every class exists and that
    /// every app's arguments parse. Nothing is created.
    pub fn check(&self, config: &Config) -> Result<(), ConfigError> {
        config.validate()?;
        for (name, spec) in config.apps() {
            let class = self.class(config, name, &spec.class)?;
            (class.check)(&spec.args).map_err(|e| args_error(name, &spec.class, e))?;
        }
        Ok(())
    }

    pub(crate) fn create(&self, config: &Config, name: &str) -> Result<Box<dyn App>, ConfigError> {
        let spec = config.app_spec(name).expect("app in config");
        let class = self.class(config, name, &spec.class)?;
        let ctx = AppContext { name, class: &spec.class };
        (class.create)(&spec.args, &ctx).map_err(|f| failure(config, name, &spec.class, f))
    }

    pub(crate) fn reconfigure(&self, config: &Config, name: &str, app: &mut dyn App) -> Result<bool, ConfigError> {
        let spec = config.app_spec(name).expect("app in config");
        let class = self.class(config, name, &spec.class)?;
        let ctx = AppContext { name, class: &spec.class };
        (class.reconfigure)(app, &spec.args, &ctx).map_err(|f| failure(config, name, &spec.class, f))
    }
}

/// The engine's own classes, made by it only.
fn hidden(class: &str) -> bool {
    class == crate::worker::SEND_CLASS || class == crate::worker::RECEIVE_CLASS
}

fn args_error(app: &str, class: &str, e: ConfigError) -> ConfigError {
    ConfigError { msg: format!("app `{app}` (class `{class}`): {}", e.msg), ..e }
}

fn failure(config: &Config, app: &str, class: &str, f: AppFailure) -> ConfigError {
    match f {
        AppFailure::Args(e) => args_error(app, class, e),
        AppFailure::App(e) => config.app_error(app, format!("app `{app}` (class `{class}`): {e:#}")),
    }
}
