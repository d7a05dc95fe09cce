//! Priority lanes: named pairs of a topic and its pull subscription, in the order a worker
//! prefers them (`LANES=urgent,default`).
//!
//! The naming rule, stated once here: the lane [`DEFAULT_LANE`] (`default`) is the jobs topic
//! and subscription themselves (`TOPIC_ID`, `SUBSCRIPTION_ID`); any other lane `NAME` is the
//! topic `<TOPIC_ID>-NAME` with the subscription `<SUBSCRIPTION_ID>-NAME`. How a worker takes
//! work from its lanes is docs/design.md's rule (the receive loop, `worker::receive`).

use std::fmt;
use std::str::FromStr;

/// The lane that is the jobs topic and subscription themselves.
pub const DEFAULT_LANE: &str = "default";
/// Longest lane name.
pub const MAX_LANE_NAME: usize = 32;
/// Most lanes a worker reads (each one is a pull while the lanes above it are empty).
pub const MAX_LANES: usize = 8;

/// A lane's name: 1..=[`MAX_LANE_NAME`] ASCII letters, digits, `-` and `_`, starting with a
/// letter (so `<TOPIC_ID>-NAME` is a valid Pub/Sub name whenever `TOPIC_ID` is).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LaneName(String);

impl LaneName {
    /// The lane [`DEFAULT_LANE`].
    pub fn default_lane() -> LaneName {
        LaneName(DEFAULT_LANE.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is [`DEFAULT_LANE`].
    pub fn is_default(&self) -> bool {
        self.0 == DEFAULT_LANE
    }
}

impl fmt::Display for LaneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a lane name or a list of lanes is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LaneError {
    /// The name breaks [`LaneName`]'s rule.
    BadName(String),
    /// The list names no lane.
    Empty,
    /// The list names a lane twice.
    Twice(String),
    /// The list is longer than [`MAX_LANES`].
    TooMany(usize),
}

impl fmt::Display for LaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LaneError::BadName(n) => write!(
                f,
                "lane name {n:?} must be 1 to {MAX_LANE_NAME} ASCII letters, digits, `-` or `_`, starting with a letter"
            ),
            LaneError::Empty => f.write_str("the list of lanes is empty"),
            LaneError::Twice(n) => write!(f, "lane `{n}` is listed twice"),
            LaneError::TooMany(n) => write!(f, "{n} lanes: at most {MAX_LANES}"),
        }
    }
}

impl std::error::Error for LaneError {}

impl FromStr for LaneName {
    type Err = LaneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = (1..=MAX_LANE_NAME).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(LaneName(s.to_owned()))
        } else {
            Err(LaneError::BadName(s.to_owned()))
        }
    }
}

/// One lane: its name, its topic (where `submit --lane` publishes) and its subscription
/// (what a worker pulls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    /// The lane's name (a metric label: lane names are configuration, so bounded).
    pub name: LaneName,
    /// Its topic.
    pub topic: String,
    /// Its pull subscription.
    pub subscription: String,
}

impl Lane {
    /// The lane `name` of the jobs topic `topic` and subscription `subscription`, by the
    /// naming rule of this module.
    pub fn named(name: &LaneName, topic: &str, subscription: &str) -> Lane {
        let (topic, subscription) = if name.is_default() {
            (topic.to_owned(), subscription.to_owned())
        } else {
            (format!("{topic}-{name}"), format!("{subscription}-{name}"))
        };
        Lane {
            name: name.clone(),
            topic,
            subscription,
        }
    }
}

/// The lanes a worker reads, highest priority first: never empty, no name twice, at most
/// [`MAX_LANES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lanes(Vec<Lane>);

impl Lanes {
    /// The one lane of a worker without lanes: `subscription` of `topic`.
    pub fn one(topic: &str, subscription: &str) -> Lanes {
        Lanes(vec![Lane::named(
            &LaneName::default_lane(),
            topic,
            subscription,
        )])
    }

    /// `names` in order (highest priority first), by the naming rule, of the jobs topic
    /// `topic` and subscription `subscription`.
    pub fn new(names: &[LaneName], topic: &str, subscription: &str) -> Result<Lanes, LaneError> {
        if names.is_empty() {
            return Err(LaneError::Empty);
        }
        if names.len() > MAX_LANES {
            return Err(LaneError::TooMany(names.len()));
        }
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(LaneError::Twice(n.to_string()));
            }
        }
        Ok(Lanes(
            names
                .iter()
                .map(|n| Lane::named(n, topic, subscription))
                .collect(),
        ))
    }

    /// The lanes, highest priority first.
    pub fn iter(&self) -> std::slice::Iter<'_, Lane> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: a `Lanes` holds at least one lane.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The lane at `index` (0: the highest).
    pub fn get(&self, index: usize) -> Option<&Lane> {
        self.0.get(index)
    }

    /// Whether `subscription` is one of these lanes'.
    pub fn has_subscription(&self, subscription: &str) -> bool {
        self.0.iter().any(|l| l.subscription == subscription)
    }
}

/// Parses `LANES`: lane names separated by commas, highest priority first (spaces around a
/// name are ignored).
pub fn parse_lane_list(s: &str) -> Result<Vec<LaneName>, LaneError> {
    s.split(',').map(|n| n.trim().parse()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &str) -> Vec<LaneName> {
        parse_lane_list(s).unwrap()
    }

    #[test]
    fn the_default_lane_is_the_jobs_topic_and_others_are_suffixed() {
        let lanes = Lanes::new(&names("urgent, default,bulk_2"), "jobs", "jobs-sub").unwrap();
        let got: Vec<(&str, &str, &str)> = lanes
            .iter()
            .map(|l| (l.name.as_str(), l.topic.as_str(), l.subscription.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("urgent", "jobs-urgent", "jobs-sub-urgent"),
                ("default", "jobs", "jobs-sub"),
                ("bulk_2", "jobs-bulk_2", "jobs-sub-bulk_2"),
            ]
        );
        assert!(lanes.has_subscription("jobs-sub-urgent") && !lanes.has_subscription("jobs"));
        assert_eq!(
            Lanes::one("t", "s"),
            Lanes::new(&names("default"), "t", "s").unwrap()
        );
    }

    #[test]
    fn bad_names_and_lists_are_refused() {
        for bad in ["", "1st", "-x", "a b", "a.b", "ü", &"x".repeat(33)] {
            assert_eq!(
                bad.parse::<LaneName>(),
                Err(LaneError::BadName(bad.into())),
                "{bad:?}"
            );
        }
        assert!(parse_lane_list("urgent,,default").is_err());
        assert_eq!(
            Lanes::new(&names("a,b,a"), "t", "s"),
            Err(LaneError::Twice("a".into()))
        );
        assert_eq!(Lanes::new(&[], "t", "s"), Err(LaneError::Empty));
        assert_eq!(
            Lanes::new(&names("a,b,c,d,e,f,g,h,i"), "t", "s"),
            Err(LaneError::TooMany(9))
        );
        assert!("x".repeat(32).parse::<LaneName>().is_ok());
    }
}
