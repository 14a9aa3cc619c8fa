//! The referral Task's state machine and edit rights (Gravity SDOH Clinical Care, referral
//! management; `docs/referral-workflow.md`, "Task state machine"), over [`ReferralTask`], the
//! Task as the rules read it. Pure: given who acts and the Task before and after, it says whether
//! the change is allowed and, if not, which rule and element it breaks.

use serde_json::Value;

use super::outcome::{Issue, IssueCode};
use super::references::{PartyReference, ReferenceTarget};

/// `Task.status` values the referral workflow uses (`ready` and `received` are not used).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskStatus {
    Draft,
    Requested,
    Accepted,
    Rejected,
    Cancelled,
    InProgress,
    OnHold,
    Completed,
    Failed,
    EnteredInError,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 10] = [
        TaskStatus::Draft,
        TaskStatus::Requested,
        TaskStatus::Accepted,
        TaskStatus::Rejected,
        TaskStatus::Cancelled,
        TaskStatus::InProgress,
        TaskStatus::OnHold,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::EnteredInError,
    ];

    pub fn parse(raw: &str) -> Option<TaskStatus> {
        Self::ALL.into_iter().find(|s| s.code() == raw)
    }

    pub fn code(self) -> &'static str {
        match self {
            TaskStatus::Draft => "draft",
            TaskStatus::Requested => "requested",
            TaskStatus::Accepted => "accepted",
            TaskStatus::Rejected => "rejected",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::InProgress => "in-progress",
            TaskStatus::OnHold => "on-hold",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::EnteredInError => "entered-in-error",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Rejected
                | TaskStatus::Cancelled
                | TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::EnteredInError
        )
    }

    /// Moving here needs `statusReason.text`.
    pub fn needs_reason(self) -> bool {
        matches!(self, TaskStatus::Rejected | TaskStatus::Cancelled | TaskStatus::OnHold | TaskStatus::Failed)
    }

    /// The state machine, without regard to who acts.
    pub fn can_move_to(self, to: TaskStatus) -> bool {
        use TaskStatus::*;
        if to == EnteredInError {
            return self != EnteredInError;
        }
        matches!(
            (self, to),
            (Draft, Requested)
                | (Requested, Accepted | Rejected | Cancelled)
                | (Accepted, InProgress | OnHold | Cancelled | Completed | Failed)
                | (InProgress, OnHold | Cancelled | Completed | Failed)
                | (OnHold, InProgress | Cancelled | Completed | Failed)
        )
    }
}

/// A referral Task as the workflow rules read it: the elements they look up, parsed once from
/// its JSON (parse, don't validate). An element the Task lacks, or holds in a form the workflow
/// does not use, reads as `None`; whether that is allowed is for the rules to say. The JSON is
/// still the Task: what compares versions whole ([`changed_elements`]) reads
/// [`ReferralTask::resource`].
#[derive(Debug, Clone)]
pub struct ReferralTask<'a> {
    resource: &'a Value,
    status: Option<TaskStatus>,
    requester: Option<PartyReference>,
    owner: Option<PartyReference>,
    focus: Option<ReferenceTarget>,
    patient: Option<&'a str>,
    status_reason: Option<&'a str>,
}

impl<'a> ReferralTask<'a> {
    pub fn parse(task: &'a Value) -> ReferralTask<'a> {
        let reference_of = |element: &str| task.get(element).and_then(|r| r.get("reference")).and_then(Value::as_str);
        ReferralTask {
            resource: task,
            status: task.get("status").and_then(Value::as_str).and_then(TaskStatus::parse),
            requester: task.get("requester").map(PartyReference::parse),
            owner: task.get("owner").map(PartyReference::parse),
            focus: reference_of("focus").and_then(ReferenceTarget::parse),
            patient: reference_of("for"),
            status_reason: task
                .get("statusReason")
                .and_then(|reason| reason.get("text"))
                .and_then(Value::as_str)
                .filter(|text| !text.trim().is_empty()),
        }
    }

    /// The Task's JSON, as parsed.
    pub fn resource(&self) -> &'a Value {
        self.resource
    }

    /// `None`: no status, or one the workflow does not use (`ready`, `received`, a typo).
    pub fn status(&self) -> Option<TaskStatus> {
        self.status
    }

    /// Still to be worked or being worked: its status known and not terminal.
    pub fn is_open(&self) -> bool {
        self.status.is_some_and(|status| !status.is_terminal())
    }

    /// No service owns it yet and it has not ended: every CLW service may read and claim it.
    pub fn is_open_to_every_performer(&self) -> bool {
        self.owner.is_none() && self.is_open()
    }

    pub fn requester(&self) -> Option<&PartyReference> {
        self.requester.as_ref()
    }

    /// `None` when the Task has no owner (an open Task); an owner naming no organisation the
    /// rules can know is [`PartyReference::Unresolvable`].
    pub fn owner(&self) -> Option<&PartyReference> {
        self.owner.as_ref()
    }

    /// What `focus` names, of whatever type.
    pub fn focus(&self) -> Option<&ReferenceTarget> {
        self.focus.as_ref()
    }

    /// The id of the ServiceRequest `focus` names, if it names one.
    pub fn focus_service_request(&self) -> Option<&str> {
        self.focus.as_ref().filter(|focus| focus.type_name == "ServiceRequest").map(|focus| focus.id.as_str())
    }

    /// The patient the Task is `for`: its literal reference as written (`Patient/p1`).
    pub fn patient(&self) -> Option<&'a str> {
        self.patient
    }

    /// `statusReason.text`, unless it is blank.
    pub fn status_reason(&self) -> Option<&'a str> {
        self.status_reason
    }
}

/// The part the acting organisation plays for this Task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskParty {
    /// The referrer: the Task's requester organisation.
    Requester,
    /// The performer: the Task's owner organisation (or a performer claiming an open Task).
    Owner,
}

impl TaskParty {
    /// Who may set what (docs/referral-workflow.md, "Task state machine").
    pub fn may_set(self, status: TaskStatus) -> bool {
        use TaskStatus::*;
        match self {
            TaskParty::Requester => matches!(status, Draft | Requested | Cancelled | EnteredInError),
            TaskParty::Owner => {
                matches!(status, Accepted | Rejected | InProgress | OnHold | Completed | Failed | Cancelled)
            }
        }
    }
}

/// Elements the owner may change (plus the server-owned `meta`, `id`, `lastModified`).
const OWNER_EDITABLE: &[&str] = &["status", "statusReason", "businessStatus", "output", "note"];
/// Elements the requester may change once the performer has the Task.
const REQUESTER_EDITABLE_LATE: &[&str] = &["status", "statusReason", "note"];
/// Elements the server manages and ignores in a comparison.
const SERVER_OWNED: &[&str] = &["id", "meta", "lastModified"];

/// Why a Task change is refused: forbidden for this party (403) or against the rules (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Forbidden(Issue),
    Unprocessable(Issue),
}

fn unprocessable(message: String, element: &str) -> Refusal {
    Refusal::Unprocessable(Issue::error(IssueCode::BusinessRule, message).at(format!("Task.{element}")))
}

fn forbidden(message: String, element: &str) -> Refusal {
    Refusal::Forbidden(Issue::error(IssueCode::Forbidden, message).at(format!("Task.{element}")))
}

/// The top-level elements whose values differ between two versions.
pub fn changed_elements<'a>(before: &'a Value, after: &'a Value) -> Vec<&'a str> {
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        return Vec::new();
    };
    let mut keys: Vec<&str> = b.keys().chain(a.keys()).map(String::as_str).collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter().filter(|k| !SERVER_OWNED.contains(k) && b.get(*k) != a.get(*k)).collect()
}

/// Checks the status of a new Task: a referrer creates it as draft or requested.
pub fn check_new_task(task: &ReferralTask<'_>) -> Result<(), Refusal> {
    match task.status() {
        Some(TaskStatus::Draft | TaskStatus::Requested) => Ok(()),
        Some(other) => Err(unprocessable(
            format!("a new referral Task must be draft or requested, not {}", other.code()),
            "status",
        )),
        None => Err(unprocessable("the Task status is not one the referral workflow uses".into(), "status")),
    }
}

/// Checks that a Task may be deleted: only while it is still a request nobody has acted on
/// (draft or requested). Once the performer has accepted, rejected or worked it, or it has
/// ended, its history is the referral's record: it is cancelled or marked entered-in-error
/// instead, and a delete would let the requester erase what the performer did. The refusal is
/// a conflict with the Task's current state (409, as RFC 9110 has it for a request the target's
/// state does not allow), naming the status and what to do instead.
pub fn check_task_deletion(task: &ReferralTask<'_>) -> Result<(), Issue> {
    match task.status() {
        Some(TaskStatus::Draft | TaskStatus::Requested) => Ok(()),
        status => {
            let instead = match status {
                Some(s) if s.is_terminal() => "mark it entered-in-error if it was recorded by mistake",
                _ => "cancel it (status cancelled with statusReason.text) or mark it entered-in-error",
            };
            let status = status.map_or("outside the workflow", TaskStatus::code);
            Err(Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "the Task is {status} and can no longer be deleted (only a draft or requested Task can); {instead}"
                ),
            )
            .at("Task.status".to_owned()))
        }
    }
}

/// Checks a change of an existing Task by `party`. `claiming` is true when a performer takes
/// an open Task (no owner) by setting itself as owner while accepting it.
pub fn check_task_change(
    party: TaskParty,
    before: &ReferralTask<'_>,
    after: &ReferralTask<'_>,
    claiming: bool,
) -> Result<(), Refusal> {
    let from = before
        .status()
        .ok_or_else(|| unprocessable("the stored Task has a status outside the workflow".into(), "status"))?;
    let to = after
        .status()
        .ok_or_else(|| unprocessable("the Task status is not one the referral workflow uses".into(), "status"))?;
    let changed = changed_elements(before.resource(), after.resource());
    if changed.is_empty() {
        return Ok(());
    }

    if from.is_terminal() && !(party == TaskParty::Requester && to == TaskStatus::EnteredInError && from != to) {
        return Err(unprocessable(
            format!(
                "the Task is {} and can no longer change (only the requester may mark it entered-in-error)",
                from.code()
            ),
            "status",
        ));
    }

    // Which elements this party may touch now.
    let editable: Option<&[&str]> = match party {
        TaskParty::Owner => Some(OWNER_EDITABLE),
        TaskParty::Requester if matches!(from, TaskStatus::Draft | TaskStatus::Requested) => None,
        TaskParty::Requester => Some(REQUESTER_EDITABLE_LATE),
    };
    if let Some(editable) = editable {
        if let Some(element) = changed.iter().find(|e| !(editable.contains(e) || (claiming && **e == "owner"))) {
            return Err(match party {
                TaskParty::Owner => forbidden(
                    format!("the performer may change only {}; not {element}", OWNER_EDITABLE.join(", ")),
                    element,
                ),
                TaskParty::Requester => unprocessable(
                    format!("once the Task is {} the requester may only cancel it or mark it entered-in-error; {element} cannot change", from.code()),
                    element,
                ),
            });
        }
    }
    if claiming && !(from == TaskStatus::Requested && to == TaskStatus::Accepted) {
        return Err(unprocessable(
            "an open Task is claimed by setting the owner and accepting it in one change".into(),
            "owner",
        ));
    }

    if from != to {
        if !party.may_set(to) {
            let who = match party {
                TaskParty::Requester => "the requester",
                TaskParty::Owner => "the performer",
            };
            return Err(forbidden(format!("{who} may not set a Task to {}", to.code()), "status"));
        }
        if !from.can_move_to(to) {
            return Err(unprocessable(format!("a Task cannot move from {} to {}", from.code(), to.code()), "status"));
        }
        if to.needs_reason() && after.status_reason().is_none() {
            return Err(unprocessable(
                format!("moving a Task to {} needs statusReason.text saying why", to.code()),
                "statusReason",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::tenancy::OdsCode;
    use serde_json::json;

    fn task(status: &str) -> Value {
        json!({"resourceType": "Task", "status": status, "intent": "order", "statusReason": {"text": "because"}})
    }

    /// [`check_task_change`] of two Tasks as JSON.
    fn change(party: TaskParty, before: &Value, after: &Value, claiming: bool) -> Result<(), Refusal> {
        check_task_change(party, &ReferralTask::parse(before), &ReferralTask::parse(after), claiming)
    }

    const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

    fn referral(status: &str) -> Value {
        json!({
            "resourceType": "Task",
            "status": status,
            "intent": "order",
            "requester": {"identifier": {"system": ODS, "value": "GP0001"}},
            "focus": {"reference": "ServiceRequest/sr1"},
            "for": {"reference": "Patient/p1"}
        })
    }

    #[test]
    fn a_task_without_an_owner_is_open_to_every_performer_until_it_ends() {
        let open = referral("requested");
        let view = ReferralTask::parse(&open);
        assert_eq!(view.owner(), None);
        assert!(view.is_open() && view.is_open_to_every_performer(), "{view:?}");
        let ended = referral("cancelled");
        let view = ReferralTask::parse(&ended);
        assert!(!view.is_open() && !view.is_open_to_every_performer(), "{view:?}");
    }

    #[test]
    fn an_owner_named_by_ods_identifier_is_its_code_and_one_named_by_literal_reference_is_its_entry() {
        let mut by_identifier = referral("accepted");
        by_identifier["owner"] = json!({"identifier": {"system": ODS, "value": "CLW001"}, "display": "CLW"});
        let code = OdsCode::parse("CLW001").expect("valid ODS code");
        assert_eq!(ReferralTask::parse(&by_identifier).owner(), Some(&PartyReference::OdsCode(code)));
        let mut by_literal = referral("accepted");
        by_literal["owner"] = json!({"reference": "Organization/clw1"});
        let view = ReferralTask::parse(&by_literal);
        assert_eq!(view.owner(), Some(&PartyReference::Organization("clw1".into())));
        assert!(!view.is_open_to_every_performer(), "an owned Task is its owner's");
        let gp = OdsCode::parse("GP0001").expect("valid ODS code");
        assert_eq!(view.requester(), Some(&PartyReference::OdsCode(gp)));
    }

    #[test]
    fn an_owner_naming_no_organisation_is_still_an_owner() {
        let mut task = referral("requested");
        task["owner"] = json!({"display": "someone"});
        let view = ReferralTask::parse(&task);
        assert_eq!(view.owner(), Some(&PartyReference::Unresolvable));
        assert!(!view.is_open_to_every_performer(), "{view:?}");
    }

    #[test]
    fn an_unknown_or_missing_status_reads_as_outside_the_workflow_and_the_task_as_not_open() {
        let mut missing = referral("requested");
        missing.as_object_mut().map(|m| m.remove("status"));
        for task in [referral("ready"), referral("Requested"), missing] {
            let view = ReferralTask::parse(&task);
            assert_eq!(view.status(), None, "{task}");
            assert!(!view.is_open() && !view.is_open_to_every_performer(), "{task}");
        }
        assert_eq!(ReferralTask::parse(&referral("on-hold")).status(), Some(TaskStatus::OnHold));
    }

    #[test]
    fn a_focus_that_is_not_a_service_request_is_kept_but_names_no_service_request() {
        let request = referral("requested");
        assert_eq!(ReferralTask::parse(&request).focus_service_request(), Some("sr1"));
        let mut condition = referral("requested");
        condition["focus"] = json!({"reference": "Condition/c1"});
        let view = ReferralTask::parse(&condition);
        assert_eq!(view.focus(), Some(&ReferenceTarget { type_name: "Condition".into(), id: "c1".into() }));
        assert_eq!(view.focus_service_request(), None);
        let mut logical = referral("requested");
        logical["focus"] = json!({"identifier": {"value": "REF-1"}});
        assert_eq!(ReferralTask::parse(&logical).focus(), None, "a logical reference names no resource");
    }

    #[test]
    fn the_patient_is_the_for_reference_as_written_and_a_blank_status_reason_is_none() {
        let mut task = referral("rejected");
        task["for"] = json!({"reference": "https://linkbridge.example/fhir/Patient/p1"});
        task["statusReason"] = json!({"text": "no capacity"});
        let view = ReferralTask::parse(&task);
        assert_eq!(view.patient(), Some("https://linkbridge.example/fhir/Patient/p1"));
        assert_eq!(view.status_reason(), Some("no capacity"));
        task["statusReason"] = json!({"text": "  "});
        assert_eq!(ReferralTask::parse(&task).status_reason(), None);
        task["statusReason"] = json!({"coding": [{"code": "RRNA"}]});
        assert_eq!(ReferralTask::parse(&task).status_reason(), None, "a coded reason has no text");
    }

    #[test]
    fn the_state_machine_allows_exactly_the_gravity_transitions() {
        use TaskStatus::*;
        let allowed = [
            (Draft, Requested),
            (Requested, Accepted),
            (Requested, Rejected),
            (Requested, Cancelled),
            (Accepted, InProgress),
            (Accepted, OnHold),
            (Accepted, Cancelled),
            (Accepted, Completed),
            (Accepted, Failed),
            (InProgress, OnHold),
            (InProgress, Cancelled),
            (InProgress, Completed),
            (InProgress, Failed),
            (OnHold, InProgress),
            (OnHold, Cancelled),
            (OnHold, Completed),
            (OnHold, Failed),
        ];
        for from in TaskStatus::ALL {
            for to in TaskStatus::ALL {
                let expected = allowed.contains(&(from, to)) || (to == EnteredInError && from != EnteredInError);
                assert_eq!(from.can_move_to(to), expected, "{} -> {}", from.code(), to.code());
            }
        }
    }

    #[test]
    fn each_party_moves_only_along_its_own_transitions() {
        for party in [TaskParty::Requester, TaskParty::Owner] {
            for from in TaskStatus::ALL {
                for to in TaskStatus::ALL {
                    if from == to {
                        continue;
                    }
                    let result = change(party, &task(from.code()), &task(to.code()), false);
                    let legal_for_anyone =
                        from.can_move_to(to) && (!from.is_terminal() || to == TaskStatus::EnteredInError);
                    let expected_ok =
                        legal_for_anyone && party.may_set(to) && (!from.is_terminal() || party == TaskParty::Requester);
                    assert_eq!(result.is_ok(), expected_ok, "{party:?}: {} -> {}: {result:?}", from.code(), to.code());
                }
            }
        }
    }

    #[test]
    fn a_wrong_party_is_forbidden_and_an_illegal_move_is_unprocessable() {
        let wrong_party = change(TaskParty::Requester, &task("requested"), &task("accepted"), false);
        assert!(matches!(wrong_party, Err(Refusal::Forbidden(_))), "{wrong_party:?}");
        let illegal = change(TaskParty::Owner, &task("requested"), &task("completed"), false);
        assert!(matches!(illegal, Err(Refusal::Unprocessable(_))), "{illegal:?}");
    }

    #[test]
    fn rejecting_cancelling_holding_or_failing_needs_a_reason() {
        let mut without = task("rejected");
        without.as_object_mut().map(|m| m.remove("statusReason"));
        let result = change(TaskParty::Owner, &task("requested"), &without, false);
        let Err(Refusal::Unprocessable(issue)) = result else { panic!("expected 422, got {result:?}") };
        assert_eq!(issue.expression.as_deref(), Some("Task.statusReason"));
    }

    #[test]
    fn the_owner_may_change_only_its_elements() {
        let before = task("accepted");
        let mut after = task("in-progress");
        after["priority"] = json!("urgent");
        let result = change(TaskParty::Owner, &before, &after, false);
        let Err(Refusal::Forbidden(issue)) = result else { panic!("expected 403, got {result:?}") };
        assert_eq!(issue.expression.as_deref(), Some("Task.priority"));
        let mut progress = task("accepted");
        progress["businessStatus"] = json!({"text": "first contact made"});
        assert!(change(TaskParty::Owner, &before, &progress, false).is_ok(), "businessStatus alone");
    }

    #[test]
    fn a_claim_sets_owner_and_accepts_together() {
        let before = task("requested");
        let mut claim = task("accepted");
        claim["owner"] = json!({"identifier": {"value": "CLW001"}});
        assert!(change(TaskParty::Owner, &before, &claim, true).is_ok());
        let mut owner_only = task("requested");
        owner_only["owner"] = json!({"identifier": {"value": "CLW001"}});
        assert!(change(TaskParty::Owner, &before, &owner_only, true).is_err(), "owner without accepting");
    }

    #[test]
    fn only_a_draft_or_requested_task_can_be_deleted_and_the_refusal_names_its_status() {
        for status in TaskStatus::ALL {
            let result = check_task_deletion(&ReferralTask::parse(&task(status.code())));
            let deletable = matches!(status, TaskStatus::Draft | TaskStatus::Requested);
            assert_eq!(result.is_ok(), deletable, "{}: {result:?}", status.code());
            if let Err(issue) = result {
                assert!(issue.diagnostics.contains(status.code()), "names the status: {}", issue.diagnostics);
                assert!(issue.diagnostics.contains("entered-in-error"), "says what to do: {}", issue.diagnostics);
                assert_eq!(issue.expression.as_deref(), Some("Task.status"));
            }
        }
    }

    #[test]
    fn terminal_tasks_change_only_to_entered_in_error_by_the_requester() {
        let done = task("completed");
        assert!(change(TaskParty::Requester, &done, &task("entered-in-error"), false).is_ok());
        assert!(change(TaskParty::Owner, &done, &task("entered-in-error"), false).is_err());
        let mut noted = task("completed");
        noted["note"] = json!([{"text": "late note"}]);
        assert!(change(TaskParty::Owner, &done, &noted, false).is_err(), "no edits after the end");
    }
}
