-- The search index tables name a row's parameter by one integer (`store::param_keys`: the
-- 32-bit FNV-1a hash of `Type.name`) where two text columns, `resource_type` and `param`,
-- led every lookup index: each entry is smaller and each comparison one integer. The owner
-- indexes, which find a resource's rows to replace them, are keyed by the id alone (the type
-- is tested on the rows found). Each table is rebuilt with the keys of the parameters that had
-- rows when this was written; rows of parameters no longer registered go (nothing could find
-- them). Only this migration lists keys: a parameter registered later has no rows to convert.
CREATE TABLE migration_param_keys (
    resource_type TEXT NOT NULL,
    param TEXT NOT NULL,
    param_key INTEGER NOT NULL,
    PRIMARY KEY (resource_type, param)
);
INSERT INTO migration_param_keys (resource_type, param, param_key) VALUES
    ('Task', 'identifier', 1672975445),
    ('Task', 'status', -1690669432),
    ('Task', 'business-status', -1852128771),
    ('Task', 'code', 1656680091),
    ('Task', 'intent', -546269884),
    ('Task', 'owner', 335325081),
    ('Task', 'requester', 964299624),
    ('Task', 'subject', 707302090),
    ('Task', 'focus', 314972362),
    ('Task', 'based-on', -123250599),
    ('Task', 'part-of', 891993863),
    ('Task', 'output', -1334335633),
    ('Task', 'authored-on', 685406682),
    ('Task', 'modified', 489032909),
    ('ServiceRequest', 'identifier', 597862418),
    ('ServiceRequest', 'status', 71400075),
    ('ServiceRequest', 'intent', -1189572905),
    ('ServiceRequest', 'category', -2055879771),
    ('ServiceRequest', 'code', -1157646592),
    ('ServiceRequest', 'subject', -2033317757),
    ('ServiceRequest', 'requester', 1057309433),
    ('ServiceRequest', 'performer', -1951536791),
    ('ServiceRequest', 'supporting-info', 1674900983),
    ('ServiceRequest', 'based-on', -1405946558),
    ('ServiceRequest', 'authored', 45843955),
    ('ServiceRequest', 'occurrence', 805987748),
    ('CarePlan', 'identifier', -109244200),
    ('CarePlan', 'status', 1414504885),
    ('CarePlan', 'intent', 873829233),
    ('CarePlan', 'category', -1370655065),
    ('CarePlan', 'subject', -792940543),
    ('CarePlan', 'based-on', -800503020),
    ('CarePlan', 'author', -648639892),
    ('CarePlan', 'date', 1005140087),
    ('Patient', 'identifier', -456382781),
    ('Patient', 'name', 1724988659),
    ('Patient', 'family', 147360096),
    ('Patient', 'given', 2146706965),
    ('Patient', 'birthdate', 218419845),
    ('Patient', 'gender', -1492291411),
    ('Organization', 'identifier', -1561950273),
    ('Organization', 'name', 1616999399),
    ('Practitioner', 'identifier', -2026893178),
    ('Practitioner', 'name', 362174670),
    ('Practitioner', 'family', 794697393),
    ('Practitioner', 'given', 951115054),
    ('PractitionerRole', 'identifier', 773317106),
    ('PractitionerRole', 'practitioner', -364934787),
    ('PractitionerRole', 'organization', -1843838546),
    ('PractitionerRole', 'role', -994924139),
    ('Consent', 'identifier', 364689778),
    ('Consent', 'patient', -124622822),
    ('Consent', 'status', -1497826581),
    ('Consent', 'category', 1229170693),
    ('Subscription', 'status', -2068430864),
    ('Subscription', 'criteria', 1742256111),
    ('Subscription', 'url', -235508609),
    ('Subscription', 'type', -991822066);

CREATE TABLE idx_token_keyed (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param_key INTEGER NOT NULL,
    system TEXT,
    code TEXT,
    text TEXT
);
INSERT INTO idx_token_keyed (resource_type, id, param_key, system, code, text)
    SELECT x.resource_type, x.id, k.param_key, x.system, x.code, x.text
    FROM idx_token x JOIN migration_param_keys k ON k.resource_type = x.resource_type AND k.param = x.param;
DROP TABLE idx_token;
ALTER TABLE idx_token_keyed RENAME TO idx_token;
CREATE INDEX idx_token_by_code ON idx_token (param_key, code, id, system);
CREATE INDEX idx_token_owner ON idx_token (id);

CREATE TABLE idx_reference_keyed (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param_key INTEGER NOT NULL,
    target_type TEXT,
    target_id TEXT,
    identifier_system TEXT,
    identifier_value TEXT
);
INSERT INTO idx_reference_keyed (resource_type, id, param_key, target_type, target_id, identifier_system, identifier_value)
    SELECT x.resource_type, x.id, k.param_key, x.target_type, x.target_id, x.identifier_system, x.identifier_value
    FROM idx_reference x JOIN migration_param_keys k ON k.resource_type = x.resource_type AND k.param = x.param;
DROP TABLE idx_reference;
ALTER TABLE idx_reference_keyed RENAME TO idx_reference;
CREATE INDEX idx_reference_search ON idx_reference (param_key, target_id, target_type, id);
CREATE INDEX idx_reference_identifier_search ON idx_reference (param_key, identifier_value, id)
    WHERE identifier_value IS NOT NULL;
CREATE INDEX idx_reference_owner ON idx_reference (id);

CREATE TABLE idx_date_keyed (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param_key INTEGER NOT NULL,
    low BIGINT NOT NULL,
    high BIGINT NOT NULL
);
INSERT INTO idx_date_keyed (resource_type, id, param_key, low, high)
    SELECT x.resource_type, x.id, k.param_key, x.low, x.high
    FROM idx_date x JOIN migration_param_keys k ON k.resource_type = x.resource_type AND k.param = x.param;
DROP TABLE idx_date;
ALTER TABLE idx_date_keyed RENAME TO idx_date;
CREATE INDEX idx_date_lookup ON idx_date (param_key, low, high);
CREATE INDEX idx_date_owner ON idx_date (id);

CREATE TABLE idx_string_keyed (
    resource_type TEXT NOT NULL,
    id TEXT NOT NULL,
    param_key INTEGER NOT NULL,
    value TEXT NOT NULL,
    exact TEXT
);
INSERT INTO idx_string_keyed (resource_type, id, param_key, value, exact)
    SELECT x.resource_type, x.id, k.param_key, x.value, x.exact
    FROM idx_string x JOIN migration_param_keys k ON k.resource_type = x.resource_type AND k.param = x.param;
DROP TABLE idx_string;
ALTER TABLE idx_string_keyed RENAME TO idx_string;
CREATE INDEX idx_string_lookup ON idx_string (param_key, value);
CREATE INDEX idx_string_owner ON idx_string (id);

DROP TABLE migration_param_keys;
