//! The OpenAI projects keys go to: the server's own (`OPENAI_PROJECT_ID` /
//! `DEFAULT_PROJECT_NAME`) and each other one a rule of the policy names
//! (`project`, `project_name`). Each has its own [`Keys`] (its accounts,
//! its listing, its creates) and its own [`Cleanup`]; this puts them
//! together for the issuance core and the pages, so that every key of
//! this server is seen, revoked and swept wherever it lives.

use std::sync::Arc;
use std::time::SystemTime;

use crate::access::ProjectChoice;
use crate::cleanup::Cleanup;
use crate::config::ProjectSelector;
use crate::identity::Owner;
use crate::keys::{KeyInfo, Keys};

/// One project's keys and their cleanup.
#[derive(Clone, Debug)]
pub struct Project {
    /// How the policy names it.
    pub selector: ProjectSelector,
    /// Its keys.
    pub keys: Keys,
    /// Its sweeps.
    pub cleanup: Cleanup,
}

/// Every project of the policy, the server's own first. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Projects {
    all: Arc<[Project]>,
}

impl Projects {
    /// The server's project, then `others` (each once; one that is the
    /// server's own is left out).
    pub fn new(default: Project, others: Vec<Project>) -> Self {
        let mut all = vec![default];
        for project in others {
            if !all.iter().any(|p| p.selector == project.selector) {
                all.push(project);
            }
        }
        Self { all: all.into() }
    }

    /// Every project, the server's own first.
    pub fn all(&self) -> &[Project] {
        &self.all
    }

    /// The server's own project.
    pub fn default_project(&self) -> &Project {
        &self.all[0]
    }

    /// Where the keys of a rule that says `choice` go.
    pub fn for_choice(&self, choice: &ProjectChoice) -> &Project {
        let wanted = match choice {
            ProjectChoice::Default => return self.default_project(),
            ProjectChoice::Id(id) => ProjectSelector::Id(id.clone()),
            ProjectChoice::Name(name) => ProjectSelector::Name(name.clone()),
        };
        self.all
            .iter()
            .find(|p| p.selector == wanted)
            .unwrap_or_else(|| self.default_project())
    }

    /// `owner`'s live keys in every project, soonest expiry first.
    pub fn keys_of(&self, owner: &Owner, now: SystemTime) -> Vec<KeyInfo> {
        self.merged(|keys| keys.keys_of(owner, now))
    }

    /// Every live key of this server, soonest expiry first.
    pub fn all_keys(&self, now: SystemTime) -> Vec<KeyInfo> {
        self.merged(|keys| keys.all_keys(now))
    }

    /// Every account of `owner`, expired-but-not-yet-deleted included, with
    /// the project each is in.
    pub fn accounts_of(&self, owner: &Owner) -> Vec<(&Project, Vec<KeyInfo>)> {
        self.grouped(|keys| keys.accounts_of(owner))
    }

    /// Every account of this server, expired-but-not-yet-deleted included,
    /// with the project each is in.
    pub fn all_accounts(&self) -> Vec<(&Project, Vec<KeyInfo>)> {
        self.grouped(Keys::all_accounts)
    }

    /// One live key, by its service account, and its project.
    pub fn find(&self, service_account_id: &str, now: SystemTime) -> Option<(&Project, KeyInfo)> {
        self.all.iter().find_map(|project| {
            project
                .keys
                .find(service_account_id, now)
                .map(|key| (project, key))
        })
    }

    /// The oldest complete listing among the projects (`None` while one has
    /// none).
    pub fn listed_at(&self) -> Option<SystemTime> {
        self.all
            .iter()
            .map(|p| p.keys.listed_at())
            .try_fold(None, |oldest: Option<SystemTime>, at| {
                at.map(|at| Some(oldest.map_or(at, |o| o.min(at))))
            })
            .flatten()
    }

    fn merged(&self, of: impl Fn(&Keys) -> Vec<KeyInfo>) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self.all.iter().flat_map(|p| of(&p.keys)).collect();
        keys.sort_by(|a, b| {
            (a.expires_at, &a.service_account_id).cmp(&(b.expires_at, &b.service_account_id))
        });
        keys
    }

    fn grouped(&self, of: impl Fn(&Keys) -> Vec<KeyInfo>) -> Vec<(&Project, Vec<KeyInfo>)> {
        self.all
            .iter()
            .map(|project| (project, of(&project.keys)))
            .filter(|(_, keys)| !keys.is_empty())
            .collect()
    }
}
