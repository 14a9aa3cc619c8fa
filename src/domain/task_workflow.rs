//! The referral Task's state machine and edit rights (Gravity SDOH Clinical Care, referral
//! management; `docs/referral-workflow.md`, "Task state machine"). Pure: given who acts and the
//! Task before and after, it says whether the change is allowed and, if not, which rule and element
//! it breaks.

use serde_json::Value;

use super::outcome::{Issue, IssueCode};

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

pub fn status_of(task: &Value) -> Option<TaskStatus> {
    task.get("status").and_then(Value::as_str).and_then(TaskStatus::parse)
}

/// A Task still to be worked or being worked: its status known and not terminal.
pub fn is_open(task: &Value) -> bool {
    status_of(task).is_some_and(|status| !status.is_terminal())
}

/// `statusReason.text` present and not blank.
fn has_reason_text(task: &Value) -> bool {
    task.get("statusReason").and_then(|r| r.get("text")).and_then(Value::as_str).is_some_and(|t| !t.trim().is_empty())
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
pub fn check_new_task(task: &Value) -> Result<(), Refusal> {
    match status_of(task) {
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
pub fn check_task_deletion(task: &Value) -> Result<(), Issue> {
    match status_of(task) {
        Some(TaskStatus::Draft | TaskStatus::Requested) => Ok(()),
        status => {
            let status = status.map_or("outside the workflow", TaskStatus::code);
            let instead = match status_of(task) {
                Some(s) if s.is_terminal() => "mark it entered-in-error if it was recorded by mistake",
                _ => "cancel it (status cancelled with statusReason.text) or mark it entered-in-error",
            };
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
pub fn check_task_change(party: TaskParty, before: &Value, after: &Value, claiming: bool) -> Result<(), Refusal> {
    let from = status_of(before)
        .ok_or_else(|| unprocessable("the stored Task has a status outside the workflow".into(), "status"))?;
    let to = status_of(after)
        .ok_or_else(|| unprocessable("the Task status is not one the referral workflow uses".into(), "status"))?;
    let changed = changed_elements(before, after);
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
        if to.needs_reason() && !has_reason_text(after) {
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
    use serde_json::json;

    fn task(status: &str) -> Value {
        json!({"resourceType": "Task", "status": status, "intent": "order", "statusReason": {"text": "because"}})
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
                    let result = check_task_change(party, &task(from.code()), &task(to.code()), false);
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
        let wrong_party = check_task_change(TaskParty::Requester, &task("requested"), &task("accepted"), false);
        assert!(matches!(wrong_party, Err(Refusal::Forbidden(_))), "{wrong_party:?}");
        let illegal = check_task_change(TaskParty::Owner, &task("requested"), &task("completed"), false);
        assert!(matches!(illegal, Err(Refusal::Unprocessable(_))), "{illegal:?}");
    }

    #[test]
    fn rejecting_cancelling_holding_or_failing_needs_a_reason() {
        let mut without = task("rejected");
        without.as_object_mut().map(|m| m.remove("statusReason"));
        let result = check_task_change(TaskParty::Owner, &task("requested"), &without, false);
        let Err(Refusal::Unprocessable(issue)) = result else { panic!("expected 422, got {result:?}") };
        assert_eq!(issue.expression.as_deref(), Some("Task.statusReason"));
    }

    #[test]
    fn the_owner_may_change_only_its_elements() {
        let before = task("accepted");
        let mut after = task("in-progress");
        after["priority"] = json!("urgent");
        let result = check_task_change(TaskParty::Owner, &before, &after, false);
        let Err(Refusal::Forbidden(issue)) = result else { panic!("expected 403, got {result:?}") };
        assert_eq!(issue.expression.as_deref(), Some("Task.priority"));
        let mut progress = task("accepted");
        progress["businessStatus"] = json!({"text": "first contact made"});
        assert!(check_task_change(TaskParty::Owner, &before, &progress, false).is_ok(), "businessStatus alone");
    }

    #[test]
    fn a_claim_sets_owner_and_accepts_together() {
        let before = task("requested");
        let mut claim = task("accepted");
        claim["owner"] = json!({"identifier": {"value": "CLW001"}});
        assert!(check_task_change(TaskParty::Owner, &before, &claim, true).is_ok());
        let mut owner_only = task("requested");
        owner_only["owner"] = json!({"identifier": {"value": "CLW001"}});
        assert!(check_task_change(TaskParty::Owner, &before, &owner_only, true).is_err(), "owner without accepting");
    }

    #[test]
    fn only_a_draft_or_requested_task_can_be_deleted_and_the_refusal_names_its_status() {
        for status in TaskStatus::ALL {
            let result = check_task_deletion(&task(status.code()));
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
        assert!(check_task_change(TaskParty::Requester, &done, &task("entered-in-error"), false).is_ok());
        assert!(check_task_change(TaskParty::Owner, &done, &task("entered-in-error"), false).is_err());
        let mut noted = task("completed");
        noted["note"] = json!([{"text": "late note"}]);
        assert!(check_task_change(TaskParty::Owner, &done, &noted, false).is_err(), "no edits after the end");
    }
}
