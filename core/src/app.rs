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
//! An app *class* ([`AppClass`]) says which ports its apps have
//! ([`PortSpec`]), how to check arguments parsed out of the config, how to
//! make an app from them, and optionally how to take new arguments without a
//! restart. Classes are put in a [`Registry`] by name; any crate can add its
//! own. `Registry::check` refuses a link to a port the class does not have,
//! so a misspelled port name is an error, not a link that carries nothing.

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
    /// The app is about to move to another worker (phase 1 of a move, see
    /// `worker`): it should let go of what ties its state to this thread
    /// (buffers it lent, say), so that its successor there can take that
    /// state over. Asked again about every 100 µs until it returns true or
    /// the move's quiesce timeout passes; `stop` follows on this thread.
    fn prepare_move(&mut self) -> bool {
        true
    }
    /// The move `prepare_move` was for did not happen (the new config was
    /// refused): go on as before.
    fn move_cancelled(&mut self) {}
    /// A human-readable status, appended to `out`.
    fn report(&self, _out: &mut String) {}
    /// The app's counters, by name (committed to shared memory).
    fn counters(&self, _emit: &mut dyn FnMut(&str, u64)) {}
}

/// The port names of one direction: names (`"input"`) and patterns. A
/// pattern ends in `*` (any name characters after the prefix: `"*"` is any
/// port at all) or in `#` (one or more decimal digits: `"pool#"` is `pool0`,
/// `pool1`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortNames {
    Static(&'static [&'static str]),
    Owned(Vec<String>),
}

impl PortNames {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let (a, b): (&[&str], &[String]) = match self {
            PortNames::Static(s) => (s, &[]),
            PortNames::Owned(v) => (&[], v),
        };
        a.iter().copied().chain(b.iter().map(String::as_str))
    }

    /// Whether `port` is one of these names or matches one of the patterns.
    pub fn accepts(&self, port: &str) -> bool {
        self.iter().any(|n| name_matches(n, port))
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }

    /// For messages: `input, output` or `any name`, `none`.
    pub fn describe(&self) -> String {
        let v: Vec<String> = self
            .iter()
            .map(|n| match n {
                "*" => "any name".to_string(),
                n if n.ends_with('#') => format!("{}N (N a number)", &n[..n.len() - 1]),
                n if n.ends_with('*') => format!("{n} (any name starting `{}`)", &n[..n.len() - 1]),
                n => n.to_string(),
            })
            .collect();
        if v.is_empty() { "none".to_string() } else { v.join(", ") }
    }

    /// The declared name closest to `port` (a likely misspelling).
    fn closest(&self, port: &str) -> Option<&str> {
        self.iter()
            .filter(|n| !n.ends_with('*') && !n.ends_with('#'))
            .map(|n| (edit_distance(n, port), n))
            .filter(|&(d, n)| d <= 2 && d < n.len())
            .min()
            .map(|(_, n)| n)
    }
}

fn name_matches(pattern: &str, port: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        port.len() > prefix.len() && port.starts_with(prefix)
    } else if let Some(prefix) = pattern.strip_suffix('#') {
        port.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    } else {
        pattern == port
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The ports an app class has: what links may attach to, by direction.
///
/// ```
/// use snabb_core::app::PortSpec;
/// // Decap: packets in on any port; `output` and `reject` out.
/// const PORTS: PortSpec = PortSpec::new(&["*"], &["output", "reject"]);
/// assert!(PORTS.outputs.accepts("reject") && !PORTS.outputs.accepts("rejects"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub inputs: PortNames,
    pub outputs: PortNames,
}

impl PortSpec {
    pub const fn new(inputs: &'static [&'static str], outputs: &'static [&'static str]) -> PortSpec {
        PortSpec { inputs: PortNames::Static(inputs), outputs: PortNames::Static(outputs) }
    }

    /// Ports that depend on the arguments (one output per pool, say).
    pub fn owned(inputs: Vec<String>, outputs: Vec<String>) -> PortSpec {
        PortSpec { inputs: PortNames::Owned(inputs), outputs: PortNames::Owned(outputs) }
    }

    /// `in: input; out: output, reject`, for listings.
    pub fn describe(&self) -> String {
        format!("in: {}; out: {}", self.inputs.describe(), self.outputs.describe())
    }

    /// Why `port` cannot take a link in this direction, if it cannot.
    pub fn refuse(&self, output: bool, port: &str) -> Option<String> {
        let (names, dir) = if output { (&self.outputs, "output") } else { (&self.inputs, "input") };
        if names.accepts(port) {
            return None;
        }
        let mut msg = match names.is_empty() {
            true => format!("has no {dir} ports"),
            false => format!("has no {dir} `{port}` (its {dir}s: {})", names.describe()),
        };
        if let Some(c) = names.closest(port) {
            msg += &format!("; did you mean `{c}`?");
        }
        Some(msg)
    }
}

/// What an app is told when it is made.
pub struct AppContext<'a> {
    /// The app's name in the config.
    pub name: &'a str,
    pub class: &'a str,
}

/// A kind of app that can be made from config arguments.
pub trait AppClass: App + Sized + 'static {
    /// The arguments, parsed from RON (use `#[serde(deny_unknown_fields)]`,
    /// and typed fields: `MacAddr`, `IpAddr`, enums, so that a bad value is
    /// refused while parsing, at its line and column).
    type Args: DeserializeOwned;

    /// The ports of this class. Required: a class that does not say which
    /// ports it has does not compile, and a link to a port it does not
    /// declare is a config error (`"*"` accepts any name).
    const PORTS: PortSpec;

    /// The ports of an app with these arguments, when they depend on them
    /// (a splitter's pools). `PORTS` by default.
    fn ports(_args: &Self::Args) -> PortSpec {
        Self::PORTS
    }

    /// Check the arguments as a whole, beyond what parsing checks (values
    /// that must agree with each other), without making anything or
    /// touching the system: `snabb-rs config check` runs this, and the
    /// engine runs it before `new` and `reconfigure`, so `new` can take its
    /// arguments as checked. Resources (files, interfaces, devices) are
    /// looked at by `new`.
    fn validate(_args: &Self::Args) -> anyhow::Result<()> {
        Ok(())
    }

    fn new(args: Self::Args, ctx: &AppContext) -> anyhow::Result<Self>;

    /// Take new arguments without a restart. Return `Ok(false)` to have the
    /// engine stop this instance and start a new one instead (the default).
    fn reconfigure(&mut self, _args: Self::Args, _ctx: &AppContext) -> anyhow::Result<bool> {
        Ok(false)
    }
}

type Create = fn(&Args, &AppContext) -> Result<Box<dyn App>, AppFailure>;
type Check = fn(&Args) -> Result<PortSpec, ConfigError>;
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
    ports: PortSpec,
    doc: &'static str,
}

/// Parse and validate: everything `config check` can know.
fn parse_checked<C: AppClass>(args: &Args) -> Result<C::Args, ConfigError> {
    let a = args.parse::<C::Args>()?;
    C::validate(&a).map_err(|e| args.error(format!("{e:#}")))?;
    Ok(a)
}

fn create<C: AppClass>(args: &Args, ctx: &AppContext) -> Result<Box<dyn App>, AppFailure> {
    let a = parse_checked::<C>(args).map_err(AppFailure::Args)?;
    C::new(a, ctx).map(|app| Box::new(app) as Box<dyn App>).map_err(AppFailure::App)
}

fn check<C: AppClass>(args: &Args) -> Result<PortSpec, ConfigError> {
    parse_checked::<C>(args).map(|a| C::ports(&a))
}

fn reconfigure<C: AppClass>(app: &mut dyn App, args: &Args, ctx: &AppContext) -> Result<bool, AppFailure> {
    let a = parse_checked::<C>(args).map_err(AppFailure::Args)?;
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
            Class { create: create::<C>, check: check::<C>, reconfigure: reconfigure::<C>, ports: C::PORTS, doc },
        );
        assert!(old.is_none(), "app class `{name}` registered twice");
        self
    }

    /// Class names and descriptions.
    /// (The engine's hidden classes are not among them.)
    pub fn classes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.classes.iter().filter(|(k, _)| !hidden(k)).map(|(k, c)| (k.as_str(), c.doc))
    }

    /// The ports a class declares (`AppClass::PORTS`).
    pub fn ports(&self, class: &str) -> Option<&PortSpec> {
        self.classes.get(class).map(|c| &c.ports)
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

    /// Check a whole config: its shape, that every class exists, that every
    /// app's arguments parse and pass the class's `validate`, and that every
    /// link joins ports the classes have. Nothing is created.
    pub fn check(&self, config: &Config) -> Result<(), ConfigError> {
        config.validate()?;
        let mut ports = BTreeMap::new();
        for (name, spec) in config.apps() {
            let class = self.class(config, name, &spec.class)?;
            let p = (class.check)(&spec.args).map_err(|e| args_error(name, &spec.class, e))?;
            ports.insert(name, p);
        }
        for (link, _) in config.links() {
            for (end, output) in [(&link.from, true), (&link.to, false)] {
                if let Some(why) = ports[end.app.as_str()].refuse(output, &end.port) {
                    let class = &config.app_spec(&end.app).expect("app in config").class;
                    return Err(config.link_error(link, format!("link `{link}`: `{}` ({class}) {why}", end.app)));
                }
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Fwd;
    impl App for Fwd {}
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FwdArgs {
        #[allow(dead_code)]
        n: u32,
    }
    impl AppClass for Fwd {
        type Args = FwdArgs;
        const PORTS: PortSpec = PortSpec::new(&["input"], &["output", "pool#", "x*"]);
        fn validate(a: &FwdArgs) -> anyhow::Result<()> {
            anyhow::ensure!(a.n > 0, "n must be at least 1");
            Ok(())
        }
        fn new(_: FwdArgs, _: &AppContext) -> anyhow::Result<Fwd> {
            Ok(Fwd)
        }
    }

    fn check(text: &str) -> Result<(), String> {
        let mut r = Registry::new();
        r.register::<Fwd>("Fwd", "test");
        let c = Config::parse(text, Some("t.ron")).map_err(|e| e.to_string())?;
        r.check(&c).map_err(|e| e.to_string())
    }

    #[test]
    fn patterns() {
        let p = PortSpec::new(&["input"], &["output", "pool#", "x*"]);
        for ok in ["output", "pool0", "pool63", "xy", "x-1"] {
            assert!(p.outputs.accepts(ok), "{ok}");
        }
        for bad in ["outputs", "pool", "poolx", "pool1a", "x", "input"] {
            assert!(!p.outputs.accepts(bad), "{bad}");
        }
        assert!(PortSpec::new(&["*"], &[]).inputs.accepts("anything"));
        assert_eq!(p.describe(), "in: input; out: output, poolN (N a number), x* (any name starting `x`)");
        assert_eq!(PortSpec::new(&[], &["*"]).describe(), "in: none; out: any name");
    }

    #[test]
    fn a_misspelled_port_is_an_error_at_its_link() {
        let apps = "(apps: {\n  \"a\": (class: \"Fwd\", args: (n: 1)),\n  \"b\": (class: \"Fwd\", args: (n: 1)),\n},\n";
        check(&format!("{apps}links: [\"a.output -> b.input\", \"a.pool7 -> b.input2\"])")).unwrap_err();
        assert_eq!(
            check(&format!("{apps}links: [\"a.output -> b.input\", \"a.pool7 -> b.x\"])")).unwrap_err(),
            "t.ron:5:32: link `a.pool7 -> b.x`: `b` (Fwd) has no input `x` (its inputs: input)"
        );
        assert_eq!(
            check(&format!("{apps}links: [\"a.outptu -> b.input\"])")).unwrap_err(),
            "t.ron:5:9: link `a.outptu -> b.input`: `a` (Fwd) has no output `outptu` \
             (its outputs: output, poolN (N a number), x* (any name starting `x`)); did you mean `output`?"
        );
        check(&format!("{apps}links: [\"a.output -> b.input\"])")).unwrap();
    }

    #[test]
    fn argument_errors_have_a_place() {
        // A missing field, with no args at all: the app's name.
        let e = check("(apps: {\n  \"a\": (class: \"Fwd\"),\n})").unwrap_err();
        assert!(e.starts_with("t.ron:2:3: app `a` (class `Fwd`): ") && e.contains("`n`"), "{e}");
        // With args: where the struct that lacks it starts.
        let e = check("(apps: {\n  \"a\": (class: \"Fwd\", args: (\n  )),\n})").unwrap_err();
        assert!(e.starts_with("t.ron:2:30: ") && e.contains("`n`"), "{e}");
        // `validate`: where the args start.
        let e = check("(apps: {\n  \"a\": (class: \"Fwd\", args: (n: 0)),\n})").unwrap_err();
        assert_eq!(e, "t.ron:2:29: app `a` (class `Fwd`): n must be at least 1");
    }
}
