//! Waiting for the cloud: asynchronous jobs, and batched polling of many disks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;

use super::EvsClient;
use super::error::{Error, Result};
use super::evs::{JobId, Volume, check_listed_id};
use everest_cloud::lenient;
use everest_cloud::{Call, Service};

/// The status of a job.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum JobStatus {
    /// `INIT`
    Init,
    /// `RUNNING`
    Running,
    /// `SUCCESS`: done.
    Success,
    /// `FAIL`: done, with `error_code` and `fail_reason`.
    Fail,
    /// `PENDING_PAYMENT` (ECS, prepaid resources).
    PendingPayment,
    /// A value this client does not know; treated as still running.
    Other(String),
}

impl From<String> for JobStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "INIT" => JobStatus::Init,
            "RUNNING" => JobStatus::Running,
            "SUCCESS" => JobStatus::Success,
            "FAIL" => JobStatus::Fail,
            "PENDING_PAYMENT" => JobStatus::PendingPayment,
            _ => JobStatus::Other(s),
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobStatus::Init => "INIT",
            JobStatus::Running => "RUNNING",
            JobStatus::Success => "SUCCESS",
            JobStatus::Fail => "FAIL",
            JobStatus::PendingPayment => "PENDING_PAYMENT",
            JobStatus::Other(s) => s,
        })
    }
}

/// What a job worked on. EVS jobs name the disk; ECS jobs (attach, detach) name only the
/// server, so nothing here may be relied on to say which disk an ECS job touched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct JobEntities {
    /// The disk (EVS jobs only); for a create job, the new disk's id.
    #[serde(default)]
    pub volume_id: Option<String>,
    /// The server (ECS jobs).
    #[serde(default)]
    pub server_id: Option<String>,
    /// Why an ECS sub-job failed, when it says.
    #[serde(default)]
    pub errorcode_message: Option<String>,
    /// The disk name.
    #[serde(default)]
    pub name: Option<String>,
    /// The disk size in GB.
    #[serde(default, deserialize_with = "lenient::flexible_u64")]
    pub size: u64,
    /// The disk type.
    #[serde(default)]
    pub volume_type: Option<String>,
    /// Child jobs (batch creates, ECS attach/detach).
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub sub_jobs: Vec<Job>,
}

/// An asynchronous job of EVS or ECS.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Job {
    /// The job id.
    pub job_id: String,
    /// e.g. `createVolume`, `attachVolume`.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub job_type: String,
    /// Where it stands.
    pub status: JobStatus,
    /// What it worked on.
    #[serde(default, deserialize_with = "lenient::null_default")]
    pub entities: JobEntities,
    /// Set when it failed.
    #[serde(default)]
    pub error_code: Option<String>,
    /// Set when it failed.
    #[serde(default)]
    pub fail_reason: Option<String>,
}

impl Job {
    /// The disk an EVS job is about, looking into sub-jobs when the top level does not say;
    /// `None` for ECS jobs, which never name the disk.
    pub fn volume_id(&self) -> Option<&str> {
        self.entities.volume_id.as_deref().or_else(|| {
            self.entities
                .sub_jobs
                .iter()
                .find_map(|j| j.entities.volume_id.as_deref())
        })
    }

    pub(crate) fn into_error(self) -> Error {
        // Some clouds report the reason only on the failed sub-job.
        let failed_sub = self
            .entities
            .sub_jobs
            .iter()
            .find(|j| j.status == JobStatus::Fail);
        let error_code = self
            .error_code
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| failed_sub.and_then(|j| j.error_code.clone()));
        let fail_reason = self
            .fail_reason
            .clone()
            .filter(|r| !r.is_empty())
            .or_else(|| failed_sub.and_then(|j| j.fail_reason.clone()))
            .or_else(|| failed_sub.and_then(|j| j.entities.errorcode_message.clone()));
        Error::JobFailed {
            job_id: self.job_id,
            job_type: self.job_type,
            error_code,
            fail_reason,
        }
    }
}

/// A caller's verdict on one disk while waiting for many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeWait {
    /// This disk is where it should be.
    Done,
    /// Not yet; poll again.
    Pending,
    /// It will never get there (e.g. status `error`); stop waiting.
    Failed(String),
}

impl EvsClient {
    /// Reads a job from the EVS or ECS job API.
    pub async fn get_job(&self, service: Service, job_id: &JobId) -> Result<Job> {
        if service == Service::Iam {
            return Err(Error::InvalidInput("IAM has no jobs".into()));
        }
        let call = Call::new(
            service,
            "get_job",
            Method::GET,
            vec![
                "v1".to_owned(),
                self.project_id().to_owned(),
                "jobs".to_owned(),
                job_id.0.clone(),
            ],
        );
        self.transport().execute(&call).await?.json(&call)
    }

    /// Waits for a job through the instance's shared poller until `SUCCESS` (→ the job),
    /// `FAIL` (→ `JobFailed`) or `deadline` (→ `JobTimeout`).
    ///
    /// The job was accepted, so only its end or the deadline ends the wait: a poll that fails
    /// transiently (429, 5xx, timeout, connection) after its own retries slows the polling and
    /// the wait goes on. A poll the cloud refuses for good (the job unknown, credentials
    /// rejected) ends it with that error.
    pub async fn wait_for_job(
        &self,
        service: Service,
        job_id: &JobId,
        deadline: Duration,
    ) -> Result<Job> {
        if service == Service::Iam {
            return Err(Error::InvalidInput("IAM has no jobs".into()));
        }
        self.poller()
            .job(&self.lookup(), service, job_id, deadline)
            .await
    }

    /// Waits through the instance's shared poller until `verdict` says `Done` for the disk
    /// `id` (→ the last seen state, `None` if it does not exist) or `Failed`, or `deadline`
    /// passes. `kind` names the wait (e.g. `attached`) for the pace it learns. The disk's looks
    /// share `list_volumes` calls (60 ids each) with every other wait of the instance.
    pub async fn wait_for_volume<F>(
        &self,
        kind: &str,
        id: &str,
        verdict: F,
        deadline: Duration,
    ) -> Result<Option<Volume>>
    where
        F: Fn(Option<&Volume>) -> VolumeWait + Send + 'static,
    {
        check_listed_id(id)?;
        self.poller()
            .disk(&self.lookup(), kind, id, Box::new(verdict), deadline)
            .await
    }

    /// Like [`EvsClient::wait_for_volume`] for many disks at once (→ each one's last seen
    /// state); the first disk that fails ends the wait, and a timeout names every disk still
    /// pending.
    pub async fn wait_for_volumes<F>(
        &self,
        kind: &str,
        ids: &[String],
        predicate: F,
        deadline: Duration,
    ) -> Result<BTreeMap<String, Option<Volume>>>
    where
        F: Fn(&str, Option<&Volume>) -> VolumeWait + Send + Sync + 'static,
    {
        let predicate = Arc::new(predicate);
        let ids: BTreeSet<&String> = ids.iter().collect();
        let mut waits = tokio::task::JoinSet::new();
        for id in ids {
            let (client, predicate, kind, id) =
                (self.clone(), predicate.clone(), kind.to_owned(), id.clone());
            waits.spawn(async move {
                let verdict = {
                    let id = id.clone();
                    move |v: Option<&Volume>| predicate(&id, v)
                };
                let seen = client.wait_for_volume(&kind, &id, verdict, deadline).await;
                (id, seen)
            });
        }
        let mut done = BTreeMap::new();
        let mut pending = Vec::new();
        let mut waited = Duration::ZERO;
        while let Some(joined) = waits.join_next().await {
            let (id, seen) = joined.map_err(|e| Error::InvalidInput(format!("disk wait: {e}")))?;
            match seen {
                Ok(v) => {
                    done.insert(id, v);
                }
                Err(Error::WaitTimeout {
                    pending: p,
                    waited: w,
                }) => {
                    pending.extend(p);
                    waited = waited.max(w);
                }
                // Dropping the other waits takes them off the poller.
                Err(e) => return Err(e),
            }
        }
        if pending.is_empty() {
            Ok(done)
        } else {
            pending.sort();
            Err(Error::WaitTimeout { pending, waited })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_decodes_and_failures_carry_codes() {
        let ok: Job = serde_json::from_str(
            r#"{"job_id":"j1","job_type":"createVolume","status":"SUCCESS",
                "entities":{"volume_id":"v1","name":"pvc","size":10,"volume_type":"SSD"},
                "error_code":null,"fail_reason":null,"begin_time":"2016-05-25T02:38:40.392Z"}"#,
        )
        .unwrap();
        assert_eq!(ok.status, JobStatus::Success);
        assert_eq!(ok.volume_id(), Some("v1"));

        // ECS's own job shape (the official SDK's JobEntities/SubJob): no disk id anywhere.
        let ecs: Job = serde_json::from_str(
            r#"{"job_id":"j2","job_type":"attachVolume","status":"FAIL","begin_time":"t",
                "end_time":"t","error_code":null,"fail_reason":null,
                "entities":{"server_id":"s1","sub_jobs_total":1,"sub_jobs":[
                {"job_id":"j3","job_type":"attachVolume","status":"FAIL","begin_time":"t",
                 "end_time":"t","entities":{"server_id":"s1","errorcode_message":"too many disks"},
                 "error_code":"Ecs.0104","fail_reason":null}]}}"#,
        )
        .unwrap();
        assert_eq!(ecs.volume_id(), None);
        assert_eq!(ecs.entities.server_id.as_deref(), Some("s1"));
        let err = ecs.into_error();
        assert_eq!(err.code(), Some("Ecs.0104"));
        assert!(err.to_string().contains("too many disks"), "{err}");

        // An EVS batch create names each disk in its sub-jobs.
        let batch: Job = serde_json::from_str(
            r#"{"job_id":"j4","status":"SUCCESS","entities":{"sub_jobs":[
                {"job_id":"j5","status":"SUCCESS","entities":{"volume_id":"v9","size":10}}]}}"#,
        )
        .unwrap();
        assert_eq!(batch.volume_id(), Some("v9"));

        let odd: Job =
            serde_json::from_str(r#"{"job_id":"j","status":"PENDING_PAYMENT","entities":null}"#)
                .unwrap();
        assert_eq!(odd.status, JobStatus::PendingPayment);
        assert_eq!(JobStatus::from("NEW".to_owned()).to_string(), "NEW");
    }
}
