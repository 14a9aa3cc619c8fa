-- `patient` of Task, ServiceRequest and CarePlan is answered from the index rows of `subject`,
-- the same element (`SearchParam::rows_of`): extraction kept every reference under both names,
-- whatever its target type, so these rows are copies. Two rows and four B-tree entries fewer
-- per referral.
DELETE FROM idx_reference WHERE param = 'patient' AND resource_type IN ('Task', 'ServiceRequest', 'CarePlan');
