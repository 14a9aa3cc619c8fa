-- Visibility keys come from two places: the resource's current content (its requester, owner,
-- author; an open Task's "any performer"), which is recomputed on every write, and grants
-- (its creator; a referral's patient for the CLW service it was sent to), which persist.
ALTER TABLE resource_visibility ADD COLUMN source TEXT NOT NULL DEFAULT 'grant';
