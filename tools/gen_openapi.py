# Generates openapi/linkbridge.openapi.yaml (issue 8): run `python3 tools/gen_openapi.py` (needs
# PyYAML), never edit the YAML by hand. The per-type paths repeat for nine types, so they are
# written by this script. The search parameters below mirror src/domain/search_params.rs;
# tests/api/openapi.rs holds the contract to the routes and search parameters, and
# tools/contract/run.sh holds it to a running server (schemathesis).
import base64, json, yaml, pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
EX = ROOT / 'profiles/examples'
def load(p): return json.loads(pathlib.Path(p).read_text())

TYPES = ['ServiceRequest','Task','CarePlan','Patient','Organization','Practitioner','PractitionerRole','Consent','Subscription']
# (name, kind, targets) from src/domain/search_params.rs REGISTRY
REG = {
 'Task': [('identifier','token',[]),('status','token',[]),('business-status','token',[]),('code','token',[]),('intent','token',[]),
          ('owner','reference',['Organization','Practitioner','PractitionerRole']),('requester','reference',['Organization','Practitioner','PractitionerRole']),
          ('patient','reference',['Patient']),('subject','reference',[]),('focus','reference',[]),('based-on','reference',[]),
          ('part-of','reference',['Task']),('output','reference',[]),('authored-on','date',[]),('modified','date',[])],
 'ServiceRequest': [('identifier','token',[]),('status','token',[]),('intent','token',[]),('category','token',[]),('code','token',[]),
          ('patient','reference',['Patient']),('subject','reference',[]),('requester','reference',['Organization','Practitioner','PractitionerRole']),
          ('performer','reference',['Organization','Practitioner','PractitionerRole']),('supporting-info','reference',[]),('based-on','reference',[]),
          ('authored','date',[]),('occurrence','date',[])],
 'CarePlan': [('identifier','token',[]),('status','token',[]),('intent','token',[]),('category','token',[]),('patient','reference',['Patient']),
          ('subject','reference',[]),('based-on','reference',[]),('author','reference',[]),('date','date',[])],
 'Patient': [('identifier','token',[]),('name','string',[]),('family','string',[]),('given','string',[]),('birthdate','date',[]),('gender','token',[])],
 'Organization': [('identifier','token',[]),('name','string',[])],
 'Practitioner': [('identifier','token',[]),('name','string',[]),('family','string',[]),('given','string',[])],
 'PractitionerRole': [('identifier','token',[]),('practitioner','reference',['Practitioner']),('organization','reference',['Organization']),('role','token',[])],
 'Consent': [('identifier','token',[]),('patient','reference',['Patient']),('status','token',[]),('category','token',[])],
 'Subscription': [('status','token',[]),('criteria','token',[]),('url','token',[]),('type','token',[])],
}
# (name, kind, the parameter at the other end) from src/domain/search_params.rs CHAINS and REVERSE_CHAINS
CHAINS = {
 'Task': [('patient.identifier','token','Patient.identifier'),('subject:Patient.identifier','token','Patient.identifier'),
          ('focus:ServiceRequest.identifier','token','ServiceRequest.identifier')],
 'ServiceRequest': [('patient.identifier','token','Patient.identifier'),('subject:Patient.identifier','token','Patient.identifier'),
          ('_has:Task:focus:status','token','Task.status')],
 'CarePlan': [('patient.identifier','token','Patient.identifier'),('subject:Patient.identifier','token','Patient.identifier')],
 'Consent': [('patient.identifier','token','Patient.identifier')],
}
# reference parameters identifying an organisation: also offered with :identifier and :missing (docs/searching.md, the polling examples)
ORG_REFS = {'owner','requester','performer','author','organization'}

DATE_PATTERN = r'^(eq|ne|gt|lt|ge|le|sa|eb|ap)?[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?$'
ID_PATTERN = r'^[A-Za-z0-9\-.]{1,64}$'
KIND_DESC = {
 'token': 'token: `code`, `system|code`, `|code` or `system|`; comma-separated values are ORed, repeats ANDed. Modifiers `:not`, `:missing`, `:text` are accepted as `name:modifier`.',
 'reference': 'reference: `Type/id`, `id`, or this server\'s absolute URL; modifiers `:missing` and `:identifier` (`system|value`).',
 'date': 'date: an optional prefix (eq, ne, gt, lt, ge, le, sa, eb, ap) and a date, partial date or dateTime.',
 'string': 'string: case- and accent-insensitive prefix match; modifiers `:exact` and `:contains`.',
}
REQUEST_STATUS = ['draft','active','on-hold','revoked','completed','entered-in-error','unknown']
TASK_STATUS = ['draft','requested','accepted','rejected','cancelled','in-progress','on-hold','failed','completed','entered-in-error']
TOPICS = ['https://linkbridge.scot/fhir/SubscriptionTopic/referral-task',
          'https://linkbridge.scot/fhir/SubscriptionTopic/referral-servicerequest',
          'https://linkbridge.scot/fhir/SubscriptionTopic/link-worker-careplan']
# A list, not a set: the output must not depend on hash order.
PROFILED = ['ServiceRequest','Task','CarePlan','Patient']

def ref(kind, name): return {'$ref': f'#/components/{kind}/{name}'}
def sref(name): return ref('schemas', name)
def pref(name): return ref('parameters', name)
def rref(name): return ref('responses', name)
def href(name): return ref('headers', name)

# ---------------------------------------------------------------- schemas
S = {}
S['Coding'] = {'type':'object','properties':{'system':{'type':'string','format':'uri'},'version':{'type':'string'},'code':{'type':'string'},'display':{'type':'string'},'userSelected':{'type':'boolean'}},'additionalProperties':True}
S['CodeableConcept'] = {'type':'object','properties':{'coding':{'type':'array','minItems':1,'items':sref('Coding')},'text':{'type':'string'}},'additionalProperties':True}
S['Identifier'] = {'type':'object','properties':{'use':{'type':'string','enum':['usual','official','temp','secondary','old']},'type':sref('CodeableConcept'),'system':{'type':'string','format':'uri'},'value':{'type':'string'}},'additionalProperties':True}
S['Reference'] = {'type':'object','description':'A literal reference (`Type/id`, `urn:uuid:` inside a transaction) and/or a logical one (`identifier`, e.g. an ODS code).','properties':{'reference':{'type':'string'},'type':{'type':'string'},'identifier':sref('Identifier'),'display':{'type':'string'}},'additionalProperties':True}
S['Extension'] = {'type':'object','required':['url'],'properties':{'url':{'type':'string','format':'uri'}},'additionalProperties':True,'description':'An extension: `url` and one `value[x]`.'}
S['Meta'] = {'type':'object','properties':{'versionId':{'type':'string'},'lastUpdated':{'type':'string','format':'date-time'},'source':{'type':'string'},'profile':{'type':'array','items':{'type':'string','format':'uri'}},'security':{'type':'array','items':sref('Coding')},'tag':{'type':'array','items':sref('Coding')}},'additionalProperties':True}
S['Annotation'] = {'type':'object','required':['text'],'properties':{'text':{'type':'string'},'time':{'type':'string'},'authorString':{'type':'string'},'authorReference':sref('Reference')},'additionalProperties':True}
S['HumanName'] = {'type':'object','properties':{'use':{'type':'string'},'text':{'type':'string'},'family':{'type':'string'},'given':{'type':'array','items':{'type':'string'}},'prefix':{'type':'array','items':{'type':'string'}},'suffix':{'type':'array','items':{'type':'string'}}},'additionalProperties':True}
S['Period'] = {'type':'object','properties':{'start':{'type':'string'},'end':{'type':'string'}},'additionalProperties':True}

def common_props(rt):
    return {'resourceType':{'type':'string','const':rt},'id':{'type':'string','pattern':ID_PATTERN},'meta':sref('Meta'),
            'implicitRules':{'type':'string','format':'uri'},'language':{'type':'string'},
            'text':{'type':'object','additionalProperties':True},'contained':{'type':'array','items':sref('Resource')},
            'extension':{'type':'array','items':sref('Extension')},'modifierExtension':{'type':'array','items':sref('Extension')}}

S['Resource'] = {'type':'object','required':['resourceType'],'description':'Any FHIR R4 resource (JSON representation).',
                 'properties':{'resourceType':{'type':'string'},'id':{'type':'string'},'meta':sref('Meta')},'additionalProperties':True}
S['OperationOutcome'] = {'type':'object','required':['resourceType','issue'],'description':'Every error response of the FHIR API is an OperationOutcome (src/http/error.rs).',
  'properties':{'resourceType':{'type':'string','const':'OperationOutcome'},'id':{'type':'string'},'meta':sref('Meta'),
    'issue':{'type':'array','minItems':1,'items':{'type':'object','required':['severity','code'],'properties':{
      'severity':{'type':'string','enum':['fatal','error','warning','information']},
      'code':{'type':'string','description':'IssueType code (invalid, structure, required, value, processing, not-supported, duplicate, not-found, deleted, too-long, conflict, forbidden, login, transient, exception, informational, ...).'},
      'details':sref('CodeableConcept'),'diagnostics':{'type':'string'},
      'expression':{'type':'array','items':{'type':'string'},'description':'FHIRPath of the offending element or parameter.'},
      'location':{'type':'array','items':{'type':'string'}}},'additionalProperties':True}}},'additionalProperties':True}
S['BundleLink'] = {'type':'object','required':['relation','url'],'properties':{'relation':{'type':'string'},'url':{'type':'string','format':'uri'}}}
S['Bundle'] = {'type':'object','required':['resourceType','type'],'properties':{
  'resourceType':{'type':'string','const':'Bundle'},'id':{'type':'string'},'meta':sref('Meta'),
  'type':{'type':'string','enum':['document','message','transaction','transaction-response','batch','batch-response','history','searchset','collection']},
  'total':{'type':'integer','minimum':0},'link':{'type':'array','items':sref('BundleLink')},
  'entry':{'type':'array','items':{'type':'object','properties':{
     'fullUrl':{'type':'string'},'resource':sref('Resource'),
     'search':{'type':'object','properties':{'mode':{'type':'string','enum':['match','include','outcome']},'score':{'type':'number'}}},
     'request':{'type':'object','required':['method','url'],'properties':{'method':{'type':'string','enum':['GET','HEAD','POST','PUT','DELETE','PATCH']},'url':{'type':'string'},
        'ifNoneMatch':{'type':'string'},'ifModifiedSince':{'type':'string'},'ifMatch':{'type':'string'},'ifNoneExist':{'type':'string'}}},
     'response':{'type':'object','required':['status'],'properties':{'status':{'type':'string'},'location':{'type':'string'},'etag':{'type':'string'},'lastModified':{'type':'string'},'outcome':sref('Resource')}}},
    'additionalProperties':True}}},'additionalProperties':True}
S['TransactionBundle'] = {'allOf':[sref('Bundle'),{'type':'object','properties':{'type':{'enum':['transaction','batch']},
  'entry':{'type':'array','items':{'type':'object','required':['request']}}}}],
  'description':'A `transaction` (all or nothing) or `batch` (entry by entry) Bundle; entries may link with `urn:uuid:` fullUrls.'}
S['Parameters'] = {'type':'object','required':['resourceType'],'properties':{'resourceType':{'type':'string','const':'Parameters'},'id':{'type':'string'},'meta':sref('Meta'),
  'parameter':{'type':'array','items':{'type':'object','required':['name'],'properties':{'name':{'type':'string'},'resource':sref('Resource'),
     'part':{'type':'array','items':{'type':'object','additionalProperties':True}}},'additionalProperties':True,'description':'`name` and one `value[x]`, `resource` or `part`.'}}},'additionalProperties':True}
S['CapabilityStatement'] = {'type':'object','required':['resourceType','status','kind','fhirVersion','format'],'properties':{
  'resourceType':{'type':'string','const':'CapabilityStatement'},'status':{'type':'string'},'date':{'type':'string'},'kind':{'type':'string'},
  'fhirVersion':{'type':'string','const':'4.0.1'},'format':{'type':'array','items':{'type':'string'}},'patchFormat':{'type':'array','items':{'type':'string'}},
  'software':{'type':'object','additionalProperties':True},'implementation':{'type':'object','additionalProperties':True},
  'rest':{'type':'array','items':{'type':'object','additionalProperties':True}}},'additionalProperties':True,
  'description':'Generated from the server\'s type and search-parameter registries (src/http/metadata.rs). Loose schema.'}
S['JsonPatch'] = {'type':'array','description':'RFC 6902 JSON Patch. `id` may not be changed; the result is validated like an update (422 if it breaks a rule or profile).',
  'items':{'type':'object','required':['op','path'],'properties':{'op':{'type':'string','enum':['add','remove','replace','move','copy','test']},'path':{'type':'string'},'from':{'type':'string'},'value':{}}}}

def cc_with(system, code):
    return {'allOf':[sref('CodeableConcept'),{'type':'object','required':['coding'],'properties':{'coding':{'type':'array','contains':{'type':'object','required':['system','code'],'properties':{'system':{'const':system},'code':{'const':code}}}}}}]}
def cc_bound(system, codes, required=False):
    """CodeableConcept whose codings in `system` must use `codes` (required: at least one such coding)."""
    coding = {'allOf':[sref('Coding'),{'if':{'type':'object','required':['system'],'properties':{'system':{'const':system}}},'then':{'type':'object','required':['code'],'properties':{'code':{'enum':codes}}}}]}
    out = {'allOf':[sref('CodeableConcept'),{'type':'object','properties':{'coding':{'type':'array','items':coding}}}]}
    if required:
        out['allOf'][1]['required'] = ['coding']
        out['allOf'][1]['properties']['coding']['contains'] = {'type':'object','required':['system','code'],'properties':{'system':{'const':system},'code':{'enum':codes}}}
    return out

LB = 'https://linkbridge.scot/fhir'
cs = lambda n: load(ROOT/f'profiles/CodeSystem-{n}.json')
codes = lambda n: [c['code'] for c in cs(n)['concept']]
def profile_desc(name): return f'Conforms to `{LB}/StructureDefinition/{name}` (profiles/StructureDefinition-{name}.json).'

sr = common_props('ServiceRequest'); sr.update({
  'identifier':{'type':'array','items':sref('Identifier')},'basedOn':{'type':'array','items':sref('Reference')},
  'status':{'type':'string','enum':REQUEST_STATUS},'intent':{'type':'string','const':'order'},
  'category':{'type':'array','items':sref('CodeableConcept')},'priority':{'type':'string','enum':['routine','urgent','asap','stat']},
  'code':cc_with('http://snomed.info/sct','871731000000106'),
  'orderDetail':{'type':'array','description':'Contact preference (required binding to ValueSet/contact-preference).','items':cc_bound(f'{LB}/CodeSystem/contact-preference', codes('contact-preference'), required=True)},
  'subject':{'allOf':[sref('Reference')],'description':'A Patient.'},'authoredOn':{'type':'string','description':'dateTime'},
  'requester':{'allOf':[sref('Reference')],'description':'An Organization or PractitionerRole.'},
  'performer':{'type':'array','maxItems':1,'items':sref('Reference'),'description':'At most one, an Organization (the CLW service).'},
  'reasonCode':{'type':'array','description':'Social needs (extensible binding to ValueSet/social-need-category).','items':cc_bound(f'{LB}/CodeSystem/social-need-category', codes('social-need-category'))},
  'supportingInfo':{'type':'array','items':sref('Reference'),'description':'Consent references.'},
  'occurrenceDateTime':{'type':'string'},'occurrencePeriod':sref('Period'),'note':{'type':'array','items':sref('Annotation')}})
S['ServiceRequest'] = {'type':'object','description':'A social prescribing referral. '+profile_desc('linkbridge-referral-servicerequest'),
  'required':['resourceType','status','intent','code','subject','requester','authoredOn'],'properties':sr,'additionalProperties':True}

tk = common_props('Task'); tk.update({
  'identifier':{'type':'array','items':sref('Identifier')},'basedOn':{'type':'array','items':sref('Reference')},'partOf':{'type':'array','items':sref('Reference')},
  'status':{'type':'string','enum':TASK_STATUS,'description':'ValueSet/referral-task-status (the referral state machine; `ready` and `received` are not used).'},
  'statusReason':cc_bound(f'{LB}/CodeSystem/referral-status-reason', codes('referral-status-reason')),
  'businessStatus':cc_bound(f'{LB}/CodeSystem/referral-business-status', codes('referral-business-status')),
  'intent':{'type':'string','const':'order'},'priority':{'type':'string','enum':['routine','urgent','asap','stat']},
  'code':cc_with('http://hl7.org/fhir/CodeSystem/task-code','fulfill'),
  'focus':{'allOf':[sref('Reference')],'description':'The referral ServiceRequest.'},'for':{'allOf':[sref('Reference')],'description':'The referral\'s Patient.'},
  'authoredOn':{'type':'string'},'lastModified':{'type':'string'},
  'requester':{'allOf':[sref('Reference')],'description':'An Organization or PractitionerRole (the GP practice).'},
  'owner':{'allOf':[sref('Reference')],'description':'An Organization (the CLW service); absent: open to every CLW service.'},
  'note':{'type':'array','items':sref('Annotation')},
  'output':{'type':'array','items':{'type':'object','required':['type'],'properties':{'type':sref('CodeableConcept')},'additionalProperties':True}}})
S['Task'] = {'type':'object','description':'The referral Task (workflow state). '+profile_desc('linkbridge-referral-task')+' lb-task-1: a rejected, cancelled, on-hold or failed Task has `statusReason.text`.',
  'required':['resourceType','status','intent','code','focus','for','requester','authoredOn'],'properties':tk,
  'if':{'type':'object','required':['status'],'properties':{'status':{'enum':['rejected','cancelled','on-hold','failed']}}},
  'then':{'type':'object','required':['statusReason'],'properties':{'statusReason':{'type':'object','required':['text']}}},
  'additionalProperties':True}

cp = common_props('CarePlan'); cp.update({
  'identifier':{'type':'array','items':sref('Identifier')},'basedOn':{'type':'array','minItems':1,'items':sref('Reference'),'description':'The referral ServiceRequest.'},
  'status':{'type':'string','enum':REQUEST_STATUS},'intent':{'type':'string','const':'plan'},
  'category':{'type':'array','items':sref('CodeableConcept')},'title':{'type':'string'},'description':{'type':'string'},
  'subject':{'allOf':[sref('Reference')],'description':'A Patient.'},'period':sref('Period'),'created':{'type':'string'},
  'author':{'allOf':[sref('Reference')],'description':'An Organization, PractitionerRole or Practitioner.'},
  'activity':{'type':'array','minItems':1,'items':{'type':'object','required':['detail'],'properties':{
     'detail':{'type':'object','required':['status','description'],'properties':{'status':{'type':'string','enum':['not-started','scheduled','in-progress','on-hold','completed','cancelled','stopped','unknown','entered-in-error']},'description':{'type':'string','minLength':1}},'additionalProperties':True}},'additionalProperties':True}},
  'note':{'type':'array','items':sref('Annotation')}})
S['CarePlan'] = {'type':'object','description':'The link worker\'s plan. '+profile_desc('linkbridge-link-worker-careplan'),
  'required':['resourceType','status','intent','subject','basedOn','author','activity'],'properties':cp,'additionalProperties':True}

NATIONAL = ['https://fhir.nhs.uk/Id/nhs-number','https://fhir.nhs.uk/Id/chi-number','http://fhir.nhs.scot.uk/Id/national/chi-number']
pt = common_props('Patient'); pt.update({
  'identifier':{'type':'array','minItems':1,'items':{'allOf':[sref('Identifier'),{'type':'object','required':['system','value'],
      'if':{'type':'object','required':['system'],'properties':{'system':{'enum':NATIONAL}}},'then':{'type':'object','properties':{'value':{'type':'string','pattern':'^[0-9]{10}$'}}}}]},
    'contains':{'type':'object','required':['system'],'properties':{'system':{'enum':NATIONAL}}},
    'description':'lb-pat-1: a CHI number (systems from the `chi_systems` setting) or an NHS number; lb-pat-2/3: modulus-11 check digit (CHI: DDMMYY date prefix, modulus 11 or 10), not expressible here.'},
  'active':{'type':'boolean'},'name':{'type':'array','minItems':1,'items':sref('HumanName')},
  'telecom':{'type':'array','items':{'type':'object','additionalProperties':True}},
  'gender':{'type':'string','enum':['male','female','other','unknown']},
  'birthDate':{'type':'string','pattern':r'^[0-9]{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?$'},
  'address':{'type':'array','items':{'type':'object','additionalProperties':True}},
  'generalPractitioner':{'type':'array','items':sref('Reference')}})
S['Patient'] = {'type':'object','description':'A patient. '+profile_desc('linkbridge-patient'),
  'required':['resourceType','identifier','name','birthDate'],'properties':pt,'additionalProperties':True}

sub = common_props('Subscription'); sub.update({
  'status':{'type':'string','enum':['requested','active','error','off'],'description':'Clients set `requested` or `off`; the server sets `active` and `error`.'},
  'contact':{'type':'array','items':{'type':'object','additionalProperties':True}},'end':{'type':'string'},
  'reason':{'type':'string'},'criteria':{'type':'string','enum':TOPICS,'description':'The topic canonical (Subscriptions R5 Backport IG).'},
  '_criteria':{'type':'object','properties':{'extension':{'type':'array','items':sref('Extension')}},'description':'`backport-filter-criteria` extensions, e.g. `Task?status=accepted,rejected`.'},
  'error':{'type':'string'},
  'channel':{'type':'object','required':['type'],'properties':{
     'type':{'type':'string','const':'rest-hook'},'endpoint':{'type':'string','format':'uri','description':'https and public unless `allow_private_webhook_endpoints`.'},
     'payload':{'type':'string','enum':['application/fhir+json','application/json']},
     '_payload':{'type':'object','properties':{'extension':{'type':'array','items':sref('Extension')}},'description':'`backport-payload-content`: empty, id-only (default) or full-resource.'},
     'header':{'type':'array','items':{'type':'string'}},'extension':{'type':'array','items':sref('Extension'),'description':'`backport-heartbeat-period`, linkbridge `webhook-secret` (never served back).'}},'additionalProperties':True}})
S['Subscription'] = {'type':'object','description':'A topic-based Subscription (Backport IG on R4).','required':['resourceType','status','reason','criteria','channel'],'properties':sub,'additionalProperties':True}

for rt in ['Organization','Practitioner','PractitionerRole','Consent']:
    props = common_props(rt); props['identifier'] = {'type':'array','items':sref('Identifier')}
    req = ['resourceType']
    if rt == 'Consent':
        props.update({'status':{'type':'string','enum':['draft','proposed','active','rejected','inactive','entered-in-error']},'scope':sref('CodeableConcept'),
                      'category':{'type':'array','minItems':1,'items':sref('CodeableConcept')},'patient':sref('Reference'),'dateTime':{'type':'string'}})
        req += ['status','scope','category']
    if rt == 'Organization':
        props.update({'active':{'type':'boolean'},'name':{'type':'string'},'alias':{'type':'array','items':{'type':'string'}}})
    if rt == 'Practitioner':
        props.update({'active':{'type':'boolean'},'name':{'type':'array','items':sref('HumanName')}})
    if rt == 'PractitionerRole':
        props.update({'active':{'type':'boolean'},'practitioner':sref('Reference'),'organization':sref('Reference'),'code':{'type':'array','items':sref('CodeableConcept')}})
    S[rt] = {'type':'object','description':f'A FHIR R4 {rt} (base resource, no linkbridge profile; loose schema).','required':req,'properties':props,'additionalProperties':True}

# Base R4 shapes of the profiled types. A profile applies only to the instances it selects
# (docs/profiles.md, "Which resources are checked": a claim in meta.profile, or for ServiceRequest
# and Task the profile's code pattern); the server takes any other valid R4 instance of the type, so
# request bodies are `anyOf` the profile and the base shape, and only R4's own required elements are
# required by the latter.
BASE_REQUIRED = {'ServiceRequest':['resourceType','status','intent','subject'],'Task':['resourceType','status','intent'],
                 'CarePlan':['resourceType','status','intent','subject'],'Patient':['resourceType']}
BASE_STATUS = {'ServiceRequest':REQUEST_STATUS,'CarePlan':REQUEST_STATUS,
               'Task':['draft','requested','received','accepted','rejected','ready','cancelled','in-progress','on-hold','failed','completed','entered-in-error']}
BASE_INTENT = {'ServiceRequest':['proposal','plan','directive','order','original-order','reflex-order','filler-order','instance-order','option'],
               'Task':['unknown','proposal','plan','order','original-order','reflex-order','filler-order','instance-order','option'],
               'CarePlan':['proposal','plan','order','option']}
for rt in PROFILED:
    props = common_props(rt)
    if rt in BASE_STATUS:
        props['status'] = {'type':'string','enum':BASE_STATUS[rt]}
        props['intent'] = {'type':'string','enum':BASE_INTENT[rt]}
    if rt in ('ServiceRequest','CarePlan'):
        props['subject'] = sref('Reference')
    S[f'{rt}Base'] = {'type':'object','required':BASE_REQUIRED[rt],'properties':props,'additionalProperties':True,
                      'description':f'Any valid FHIR R4 {rt} the profile does not select (base resource; R4\'s required elements only). '
                                    'Elements not listed are any other element R4 defines for the type.'}

# Stored (response) shapes of the profiled types: the server stores base-R4 instances that do not claim the profile.
for rt in PROFILED:
    S[f'{rt}Stored'] = {'type':'object','required':['resourceType','id'],'description':f'A stored {rt} as served. Instances the profile applies to conform to #/components/schemas/{rt}; others are any valid R4 {rt}.',
                        'properties':{'resourceType':{'const':rt},'id':{'type':'string'},'meta':sref('Meta')},'additionalProperties':True}

S['TokenRequest'] = {'type':'object','required':['grant_type','client_assertion_type','client_assertion'],'properties':{
  'grant_type':{'type':'string','const':'client_credentials'},'scope':{'type':'string','description':'Space-separated SMART v2 system scopes, e.g. `system/*.cruds`.','example':'system/*.cruds'},
  'client_assertion_type':{'type':'string','const':'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'},
  'client_assertion':{'type':'string','description':'A JWT signed with the client\'s registered private key (RS384, ES384 or RS512).','pattern':r'^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$'}}}
S['TokenResponse'] = {'type':'object','required':['access_token','token_type','expires_in','scope'],'properties':{
  'access_token':{'type':'string'},'token_type':{'type':'string','const':'bearer'},'expires_in':{'type':'integer'},'scope':{'type':'string'}}}
S['OAuthError'] = {'type':'object','required':['error'],'properties':{'error':{'type':'string','description':'RFC 6749 section 5.2 code (invalid_request, invalid_client, invalid_grant, invalid_scope, unsupported_grant_type, server_error, ...).'},'error_description':{'type':'string'}}}
S['SmartConfiguration'] = {'type':'object','required':['token_endpoint'],'properties':{'issuer':{'type':'string'},'jwks_uri':{'type':'string'},'token_endpoint':{'type':'string'},
  'grant_types_supported':{'type':'array','items':{'type':'string'}},'token_endpoint_auth_methods_supported':{'type':'array','items':{'type':'string'}},
  'token_endpoint_auth_signing_alg_values_supported':{'type':'array','items':{'type':'string'}},'scopes_supported':{'type':'array','items':{'type':'string'}},
  'capabilities':{'type':'array','items':{'type':'string'}}},'additionalProperties':True}
S['Jwks'] = {'type':'object','required':['keys'],'properties':{'keys':{'type':'array','items':{'type':'object','required':['kty'],'properties':{'kty':{'type':'string'},'kid':{'type':'string'},'alg':{'type':'string'},'use':{'type':'string'}},'additionalProperties':True}}}}
S['Probe'] = {'type':'object','required':['status'],'properties':{'status':{'type':'string'},'reason':{'type':'string','description':'Why the server is not ready (a 503 from /readyz).'}}}

# The FHIR JSON format (R4 json.html): no empty arrays, no empty strings, no empty objects, and
# `null` only inside an array (where it keeps a primitive array aligned with its `_name` twin).
# Every FHIR JSON response body is held to it (fhir_json below); request bodies that break it are 400s.
# FHIR JSON has no arrays of arrays, so an array item is FhirJsonItem (written without anyOf: the
# spec validator follows `items` and `anyOf` through references without noticing cycles).
S['FhirJson'] = {'description':'Any value of a FHIR JSON document (R4 json.html): objects have at least one property, arrays at least one item and no arrays in them, strings at least one character; `null` appears only as an array item.',
  'type':['object','array','string','number','boolean'],'minProperties':1,'additionalProperties':sref('FhirJson'),
  'minItems':1,'items':sref('FhirJsonItem'),'minLength':1}
S['FhirJsonItem'] = {'description':'An item of an array of a FHIR JSON document: a FhirJson value other than an array, or `null`.',
  'type':['object','string','number','boolean','null'],'minProperties':1,'additionalProperties':sref('FhirJson'),'minLength':1}

# The same rules on the hand-written FHIR schemas, so that generated requests respect them too.
NOT_FHIR = {'TokenRequest','TokenResponse','OAuthError','SmartConfiguration','Jwks','Probe','JsonPatch','FhirJson','FhirJsonItem'}
def fhir_rules(node):
    if isinstance(node, dict):
        if node.get('type') == 'array':
            node.setdefault('minItems', 1)
        if node.get('type') == 'string' and not ({'const','enum','pattern','minLength'} & node.keys()):
            node['minLength'] = 1
        for value in node.values():
            fhir_rules(value)
    elif isinstance(node, list):
        for value in node:
            fhir_rules(value)
for name, schema in S.items():
    if name not in NOT_FHIR:
        fhir_rules(schema)

# ---------------------------------------------------------------- headers
H = {
 'ETag':{'description':'The version: `W/"n"`.','schema':{'type':'string','pattern':r'^W/"[0-9]+"$'}},
 'Location':{'description':'`{base}/{type}/{id}/_history/{vid}`.','schema':{'type':'string','format':'uri'}},
 'Last-Modified':{'description':'HTTP-date of meta.lastUpdated.','schema':{'type':'string'}},
 'Retry-After':{'description':'Seconds to wait before retrying (5).','schema':{'type':'integer'}},
 'WWW-Authenticate':{'description':'`Bearer error="invalid_token"` (401) or `Bearer error="insufficient_scope"` (403 for a missing scope).','schema':{'type':'string'}},
}

# ---------------------------------------------------------------- parameters
P = {}
P['id'] = {'name':'id','in':'path','required':True,'description':'Logical id: 1-64 of `A-Za-z0-9-.`.','schema':{'type':'string','pattern':ID_PATTERN}}
P['vid'] = {'name':'vid','in':'path','required':True,'description':'Version id: a positive whole number.','schema':{'type':'string','pattern':'^[0-9]*[1-9][0-9]*$'}}
P['_format'] = {'name':'_format','in':'query','description':'Response format; overrides `Accept` (application/fhir+json by default). Other values: 406.','schema':{'type':'string','enum':['json','xml','application/fhir+json','application/fhir+xml','application/json','application/xml','text/xml']}}
P['_pretty'] = {'name':'_pretty','in':'query','description':'`true`: indented output.','schema':{'type':'string','enum':['true','false']}}
P['If-Match'] = {'name':'If-Match','in':'header','description':'Version-aware write: `W/"n"` (a strong `"n"` is tolerated). Mismatch: 412; malformed: 400.','schema':{'type':'string','pattern':r'^(W/)?"[0-9]*[1-9][0-9]*"$'},'example':'W/"1"'}
P['If-None-Exist'] = {'name':'If-None-Exist','in':'header','description':'Conditional create: a search query without `?`. One match: 200 with it; several: 412.','schema':{'type':'string'},'example':'identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919'}
P['X-Request-ID'] = {'name':'X-Request-ID','in':'header','description':'De-duplication key of a write (BaRS): a UUID. A replay is answered 409 (duplicate); the same id with another body 422; not a UUID 400.','schema':{'type':'string','format':'uuid'}}
P['PreferReturn'] = {'name':'Prefer','in':'header','description':'What a successful write returns (R4 http.html#ops); default `return=representation`.','schema':{'type':'string','enum':['return=minimal','return=representation','return=OperationOutcome']}}
P['PreferHandling'] = {'name':'Prefer','in':'header','description':'Unknown search parameters are a 400 (strict handling, the default); under `handling=lenient` they are ignored and left out of the `self` link.','schema':{'type':'string','enum':['handling=strict','handling=lenient']}}
P['_id'] = {'name':'_id','in':'query','description':'Logical id(s), comma-separated.','schema':{'type':'string'}}
P['_lastUpdated'] = {'name':'_lastUpdated','in':'query','description':KIND_DESC['date']+' Such searches only see changes at least `settle_window_ms` old.','schema':{'type':'string','pattern':DATE_PATTERN},'example':'gt2026-11-23T09:00:00Z'}
P['_count'] = {'name':'_count','in':'query','description':'Page size (default 50); larger than the maximum (500) is capped.','schema':{'type':'integer','minimum':0}}
P['_total'] = {'name':'_total','in':'query','schema':{'type':'string','enum':['none','estimate','accurate']}}
P['_summary'] = {'name':'_summary','in':'query','description':'`count`: the total only; `data`: without narrative. `true` and `text` are not supported (400).','schema':{'type':'string','enum':['false','count','data']}}
P['_elements'] = {'name':'_elements','in':'query','description':'Comma-separated top-level element names; results are tagged SUBSETTED.','schema':{'type':'string','pattern':'^[A-Za-z0-9]+(,[A-Za-z0-9]+)*$'}}
P['_cursor'] = {'name':'_cursor','in':'query','description':'Server-issued paging cursor from a `next`/`previous` link; anything else is a 400.','schema':{'type':'string'}}
P['_since'] = {'name':'_since','in':'query','description':'Only versions after this instant (RFC 3339).','schema':{'type':'string','format':'date-time'}}
P['_history_count'] = {'name':'_count','in':'query','description':'Page size (default 50, capped at 500).','schema':{'type':'integer','minimum':0}}
P['_history_cursor'] = {'name':'_cursor','in':'query','description':'Server-issued position from a `next` link.','schema':{'type':'integer'}}
P['profile'] = {'name':'profile','in':'query','description':'Canonical URL of a profile of the package to validate against (overrides a `profile` parameter in the body). Unknown: 400.','schema':{'type':'string','format':'uri'}}
P['conformance_url'] = {'name':'url','in':'query','description':'Canonical URL (a `|version` suffix is ignored).','schema':{'type':'string'}}

def sp_name(rt, name): return f'{rt}.{name}'.replace(':','.')
def search_param_schema(kind):
    if kind == 'date': return {'type':'string','pattern':DATE_PATTERN}
    return {'type':'string'}
SEARCH_PARAMS = {}
for rt in TYPES:
    names = []
    for name, kind, targets in REG[rt]:
        key = sp_name(rt, name)
        desc = KIND_DESC[kind] + (f' Targets: {", ".join(targets)}.' if targets else '')
        P[key] = {'name':name,'in':'query','description':desc,'schema':search_param_schema(kind)}
        names.append(key)
        if kind == 'reference' and name in ORG_REFS:
            k2 = sp_name(rt, name+':identifier')
            P[k2] = {'name':name+':identifier','in':'query','description':'The referenced party by identifier: `system|value`. An owner, requester or performer written as a literal reference to its directory Organization is found by that Organization\'s ODS code too.','schema':{'type':'string'},'example':'https://fhir.nhs.uk/Id/ods-organization-code|DEMOCLW1'}
            k3 = sp_name(rt, name+':missing')
            P[k3] = {'name':name+':missing','in':'query','description':'`true`: the element is absent.','schema':{'type':'string','enum':['true','false']}}
            names += [k2, k3]
    for name, kind, other in CHAINS.get(rt, []):
        key = sp_name(rt, name)
        what = 'Reverse chain: resources a' if name.startswith('_has:') else 'Chain: resources whose reference is a'
        P[key] = {'name':name,'in':'query','description':f'{what} resource you may read matching `{other}`: `system|value`, `value` or `|value`, comma-separated values ORed; no modifiers.','schema':search_param_schema(kind)}
        names.append(key)
    inc = [f'{rt}:{n}' for n, k, _ in REG[rt] if k == 'reference']
    rev = [f'{src}:{n}' for src in TYPES for n, k, t in REG[src] if k == 'reference' and (not t or rt in t)]
    sortable = ['_id','_lastUpdated'] + [n for n, k, _ in REG[rt] if k != 'reference']
    P[f'{rt}._sort'] = {'name':'_sort','in':'query','description':'Comma-separated keys, `-` for descending; reference parameters cannot be sorted by.','schema':{'type':'string','enum':[p for s in sortable for p in (s, '-'+s)]}}
    names.append(f'{rt}._sort')
    if inc:
        P[f'{rt}._include'] = {'name':'_include','in':'query','description':'`Type:param[:Target]` from this type; no wildcards.','schema':{'type':'string','enum':inc}}
        names.append(f'{rt}._include')
    if rev:
        P[f'{rt}._revinclude'] = {'name':'_revinclude','in':'query','description':'`Source:param[:Target]` pointing at this type; no wildcards.','schema':{'type':'string','enum':rev}}
        names.append(f'{rt}._revinclude')
    SEARCH_PARAMS[rt] = names
COMMON_SEARCH = ['_id','_lastUpdated','_count','_total','_summary','_elements','_cursor','_format','_pretty','PreferHandling']
RENDER = ['_format','_pretty']

# ---------------------------------------------------------------- responses
def fhir_json(schema):
    """A FHIR JSON response body: `schema`, and the rules of the FHIR JSON format on every value in it."""
    return {'allOf':[schema, sref('FhirJson')]}
FHIR_ERR = {'application/fhir+json':{'schema':fhir_json(sref('OperationOutcome'))}}
R = {}
def err(desc, headers=None):
    r = {'description':desc,'content':FHIR_ERR}
    if headers: r['headers'] = {h: href(h) for h in headers}
    return r
R['BadRequest'] = err('Malformed request: unparsable or structurally invalid body (strict FHIR parsing: an element FHIR R4 does not define for the type, even where the schema here is open, a wrong JSON type, a missing required element, an empty array or string, a malformed primitive, a code outside a required binding), bad id/version/header/query, invalid search parameter.')
R['Unauthorized'] = err('Missing or invalid access token.', ['WWW-Authenticate'])
R['Forbidden'] = err('The token lacks the scope for the interaction (`WWW-Authenticate: Bearer error="insufficient_scope"`), or the caller\'s organisation or role may not make this change.', ['WWW-Authenticate'])
R['NotFound'] = err('Unknown resource, or one of another organisation (indistinguishable), or unknown route/type.')
R['MethodNotAllowed'] = err('The method is not allowed on this path.')
R['NotAcceptable'] = err('Neither `_format` nor `Accept` names a served format (application/fhir+json, application/fhir+xml), or `fhirVersion` is not 4.0.')
R['Conflict'] = err('Concurrent change, a replayed `X-Request-ID` (issue code `duplicate`), or a second open referral of a patient to one CLW service.')
R['Gone'] = err('The resource (or version) has been deleted.')
R['PreconditionFailed'] = err('`If-Match` names another version, or `If-None-Exist` matches several resources.')
R['PayloadTooLarge'] = err('The body exceeds `max_body_bytes` (4 MiB by default).')
R['UnsupportedMediaType'] = err('`Content-Type` missing or not one this endpoint takes.')
R['Unprocessable'] = err('Well-formed but breaks a business rule or profile (every issue listed, with FHIRPath `expression`), or an `X-Request-ID` reused with another body.')
R['ServiceUnavailable'] = err('Transient: the database cannot be reached or cannot write just now, the access could not be audited, or the write could not commit within the settle window. Retry after `Retry-After`.', ['Retry-After'])
R['ServerError'] = err('Internal error (details logged, not returned).')
R['OperationOutcomeOK'] = {'description':'An OperationOutcome.','content':{'application/fhir+json':{'schema':fhir_json(sref('OperationOutcome'))},'application/fhir+xml':{'schema':{'type':'string'}}}}
R['SearchsetBundle'] = {'description':'A `searchset` Bundle (matches, then `_include`/`_revinclude` entries; `self`/`next`/`previous` links).','content':{'application/fhir+json':{'schema':fhir_json(sref('Bundle'))},'application/fhir+xml':{'schema':{'type':'string'}}}}
R['HistoryBundle'] = {'description':'A `history` Bundle, newest first, with `next` links.','content':{'application/fhir+json':{'schema':fhir_json(sref('Bundle'))},'application/fhir+xml':{'schema':{'type':'string'}}}}

def codes_(*cs): 
    m = {'400':'BadRequest','401':'Unauthorized','403':'Forbidden','404':'NotFound','406':'NotAcceptable','409':'Conflict','410':'Gone','412':'PreconditionFailed',
         '413':'PayloadTooLarge','415':'UnsupportedMediaType','422':'Unprocessable','500':'ServerError','503':'ServiceUnavailable'}
    return {c: rref(m[c]) for c in cs}

def fhir_content(schema, example=None):
    j = {'schema':fhir_json(schema)}
    return {'application/fhir+json':j,'application/fhir+xml':{'schema':{'type':'string'}}}

def resource_ok(rt, desc, status_headers=('ETag','Last-Modified'), may_be_outcome=False):
    schema = sref(f'{rt}Stored' if rt in PROFILED else rt)
    if may_be_outcome: schema = {'oneOf':[schema, sref('OperationOutcome')]}
    return {'description':desc,'headers':{h: href(h) for h in status_headers},'content':fhir_content(schema)}

def body_examples(rt):
    files = {'ServiceRequest':['ServiceRequest-referral.json'],'Task':['Task-referral.json'],'CarePlan':['CarePlan-link-worker.json'],'Patient':['Patient-nhs-number.json','Patient-chi-number.json']}.get(rt, [])
    out = {}
    for f in files:
        out[f.removesuffix('.json')] = {'summary':f'profiles/examples/{f}','value':load(EX/f)}
    return out

SUB_EXAMPLE = {"resourceType":"Subscription","status":"requested","reason":"referral status for our practice",
  "criteria":TOPICS[0],
  "_criteria":{"extension":[{"url":"http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-filter-criteria","valueString":"Task?status=accepted,rejected,completed"}]},
  "channel":{"type":"rest-hook","endpoint":"https://gp-system.example.org/linkbridge-hook","payload":"application/fhir+json",
    "_payload":{"extension":[{"url":"http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content","valueCode":"id-only"}]},
    "extension":[{"url":"http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period","valueUnsignedInt":3600},
                 # A new subscription must carry its signing secret (422 otherwise). This one is public: make your own
                 # with `echo "whsec_$(head -c 32 /dev/urandom | base64)"`.
                 {"url":"https://linkbridge.scot/fhir/StructureDefinition/webhook-secret",
                  "valueString":"whsec_" + base64.b64encode(b'example secret: make your own!!!').decode()}]}}

def request_body(rt, with_examples):
    schema = sref(rt)
    if rt in PROFILED:
        schema = {'anyOf':[sref(rt), sref(f'{rt}Base')],'description':f'A {rt}: where its profile applies (a claim in `meta.profile`'
                  + (', or the profile\'s code' if rt in ('ServiceRequest','Task') else '') + ') it must conform to it (422 otherwise); any other valid R4 '
                  + f'{rt} is taken as it is.'}
    j = {'schema':schema}
    if with_examples:
        ex = body_examples(rt)
        if rt == 'Subscription': ex = {'rest-hook':{'summary':'docs/subscriptions.md example (its webhook secret is public: make your own)','value':SUB_EXAMPLE}}
        if ex: j['examples'] = ex
    return {'required':True,'content':{'application/fhir+json':j,'application/fhir+xml':{'schema':{'type':'string','description':f'The {rt} in FHIR XML.'}}}}

# ---------------------------------------------------------------- paths
paths = {}
def op(summary, opid, tags, params=None, body=None, responses=None, desc=None, security=None):
    o = {'tags':tags,'summary':summary,'operationId':opid}
    if desc: o['description'] = desc
    if params: o['parameters'] = [pref(p) for p in params]
    if body: o['requestBody'] = body
    o['responses'] = responses
    if security is not None: o['security'] = security
    return o

for rt in TYPES:
    t = [rt]
    search_params = COMMON_SEARCH + SEARCH_PARAMS[rt]
    search_resp = {'200':rref('SearchsetBundle'), **codes_('400','401','403','406','500','503')}
    create_resp = {'201':resource_ok(rt,'Created. Body per `Prefer` (none for `return=minimal`).',('Location','ETag','Last-Modified'),True),
                   '200':resource_ok(rt,'Conditional create: `If-None-Exist` matched one existing resource, which is returned.',('Location','ETag','Last-Modified'),True),
                   **codes_('400','401','403','406','409','412','413','415','422','500','503')}
    paths[f'/{rt}'] = {
      'get': op(f'Search {rt}', f'search{rt}', t, search_params, None, search_resp),
      'post': op(f'Create a {rt}', f'create{rt}', t, ['If-None-Exist','X-Request-ID','PreferReturn'] + RENDER, request_body(rt, True), create_resp,
                 desc='Checked against its profile when it claims one in `meta.profile`' + (' or matches the profile\'s code pattern' if rt in ('ServiceRequest','Task') else '') + '.' if rt in PROFILED else None),
    }
    form_props = {P[k]['name']: dict(P[k]['schema'], description=P[k].get('description','')) for k in ['_id','_lastUpdated','_count','_total','_summary','_elements','_cursor'] + SEARCH_PARAMS[rt]}
    paths[f'/{rt}/_search'] = {
      'get': op(f'Search {rt} (GET on _search)', f'search{rt}Get', t, search_params, None, search_resp),
      'post': op(f'Search {rt} with form parameters', f'search{rt}Post', t, ['PreferHandling'] + RENDER,
                 {'required':True,'content':{'application/x-www-form-urlencoded':{'schema':{'type':'object','properties':form_props,'additionalProperties':{'type':'string'}}}}},
                 {'200':rref('SearchsetBundle'), **codes_('400','401','403','406','413','415','500','503')},
                 desc='Body parameters (`application/x-www-form-urlencoded`) are added to those of the URL.'),
    }
    paths[f'/{rt}/_history'] = {
      'get': op(f'History of all {rt}s', f'historyType{rt}', t, ['_since','_history_count','_history_cursor'] + RENDER, None,
                {'200':rref('HistoryBundle'), **codes_('400','401','403','406','500','503')})}
    paths[f'/{rt}/$validate'] = {
      'post': op(f'Validate a {rt}', f'validate{rt}', t, ['profile'] + RENDER,
                 {'required':True,'content':{'application/fhir+json':{'schema':{'type':'object','description':f'The {rt} to check (valid or not), or a Parameters resource with a `resource` parameter and optionally `profile`.'},
                     **({'examples':body_examples(rt)} if body_examples(rt) else {})},
                   'application/fhir+xml':{'schema':{'type':'string'}}}},
                 {'200':{'description':'The resource was read: its issues, or one informational issue ("no issues"). Nothing is written.','content':{'application/fhir+json':{'schema':fhir_json(sref('OperationOutcome'))},'application/fhir+xml':{'schema':{'type':'string'}}}},
                  **codes_('400','401','403','406','413','415','500','503')},
                 desc='Needs a create or update scope on the type.')}
    paths[f'/{rt}/{{id}}'] = {
      'parameters':[pref('id')],
      'get': op(f'Read a {rt}', f'read{rt}', t, RENDER, None, {'200':resource_ok(rt,f'The current {rt}.'), **codes_('400','401','403','404','406','410','500','503')}),
      'put': op(f'Update a {rt}', f'update{rt}', t, ['If-Match','X-Request-ID','PreferReturn'] + RENDER, request_body(rt, False),
                {'200':resource_ok(rt,'Updated (a deleted resource is brought back). Body per `Prefer`.',('ETag','Last-Modified'),True),
                 **codes_('400','401','403','404','406','409','412','413','415','422','500','503')},
                desc='The body\'s `id` must equal the URL\'s. No update-as-create: an unknown id is 404.'),
      'patch': op(f'Patch a {rt}', f'patch{rt}', t, ['If-Match','X-Request-ID','PreferReturn'] + RENDER,
                {'required':True,'content':{'application/json-patch+json':{'schema':sref('JsonPatch'),
                   **({'example':[{'op':'replace','path':'/status','value':'accepted'}]} if rt == 'Task' else {})}}},
                {'200':resource_ok(rt,'Patched. Body per `Prefer`.',('ETag','Last-Modified'),True),
                 **codes_('400','401','403','404','406','409','410','412','413','415','422','500','503')}),
      'delete': op(f'Delete a {rt}', f'delete{rt}', t, ['If-Match','X-Request-ID'], None,
                {'204':{'description':'Deleted (deleting a deleted resource is a no-op); later reads are 410.'},
                 **codes_('400','401','403','404','409','412','422','500','503')}),
    }
    paths[f'/{rt}/{{id}}/_history'] = {'parameters':[pref('id')],
      'get': op(f'History of one {rt}', f'historyInstance{rt}', t, ['_since','_history_count','_history_cursor'] + RENDER, None,
                {'200':rref('HistoryBundle'), **codes_('400','401','403','404','406','500','503')})}
    paths[f'/{rt}/{{id}}/_history/{{vid}}'] = {'parameters':[pref('id'), pref('vid')],
      'get': op(f'Read one version of a {rt}', f'vread{rt}', t, RENDER, None,
                {'200':resource_ok(rt,'That version.'), **codes_('400','401','403','404','406','410','500','503')})}

# Subscription operations
sub_err = codes_('400','401','403','404','406','410','500','503')
paths['/Subscription/{id}/$status'] = {'parameters':[pref('id')],'get': op('Subscription status', 'subscriptionStatus', ['Subscription'], RENDER, None,
   {'200':{'description':'A `subscription-status` Bundle (Backport IG): status, event count, delivery figures.','content':fhir_content(sref('Bundle'))}, **sub_err})}
P['eventsSinceNumber'] = {'name':'eventsSinceNumber','in':'query','schema':{'type':'integer','format':'int64'},'description':'First event number to list.'}
P['eventsUntilNumber'] = {'name':'eventsUntilNumber','in':'query','schema':{'type':'integer','format':'int64'},'description':'Last event number to list.'}
P['content'] = {'name':'content','in':'query','schema':{'type':'string','enum':['empty','id-only','full-resource']},'description':'Payload content of the listed events.'}
paths['/Subscription/{id}/$events'] = {'parameters':[pref('id')],'get': op('Subscription events by number', 'subscriptionEvents', ['Subscription'], ['eventsSinceNumber','eventsUntilNumber','content'] + RENDER, None,
   {'200':{'description':'A Bundle of the events (Backport IG `$events`).','content':fhir_content(sref('Bundle'))}, **sub_err})}
paths['/Subscription/{id}/$resend'] = {'parameters':[pref('id')],'post': op('Resend dead notifications', 'subscriptionResend', ['Subscription'], RENDER, None,
   {'200':{'description':'Informational OperationOutcome: how many notifications were queued again; a subscription in `error` becomes active.','content':fhir_content(sref('OperationOutcome'))}, **sub_err,
    # 409: the server kept changing the subscription's status meanwhile; 422: the subscription is `off`.
    **codes_('409','422')},
   desc='Needs update scope on Subscription (the subscriber or the operator). No request body.')}
paths['/$outbox-status'] = {'get': op('Notification outbox status (operator role)', 'outboxStatus', ['Operator'], RENDER, None,
   {'200':{'description':'Parameters: pending, delivered and dead counts, oldest pending notification and its age, attempts, failures.','content':fhir_content(sref('Parameters'))},
    **codes_('401','403','406','500')})}

# transaction / batch
txn = load(ROOT/'examples/referral-transaction.json')
paths['/'] = {'post': op('Process a transaction or batch Bundle', 'transaction', ['System'], ['X-Request-ID'] + RENDER,
   {'required':True,'content':{'application/fhir+json':{'schema':sref('TransactionBundle'),'examples':{'referral-transaction':{'summary':'examples/referral-transaction.json','value':txn}}},
                               'application/fhir+xml':{'schema':{'type':'string'}}}},
   {'200':{'description':'A `transaction-response` or `batch-response` Bundle (batch: per-entry statuses and OperationOutcomes).','content':fhir_content(sref('Bundle'))},
    **codes_('400','401','403','404','406','409','410','412','413','415','422','500','503')},
   desc='A transaction is all or nothing: the first failing entry\'s status is the response\'s (410 for an entry on a deleted resource). Entries are authorised per type and interaction.')}

# audit
P['audit_count'] = {'name':'_count','in':'query','schema':{'type':'integer','minimum':0,'maximum':4294967295}}
P['audit_cursor'] = {'name':'_cursor','in':'query','schema':{'type':'integer','format':'int64'},'description':'Server-issued position from a `next` link.'}
P['audit_entity'] = {'name':'entity','in':'query','schema':{'type':'string','pattern':r'^[A-Z][A-Za-z0-9]*/[^/]+$'},'description':'Events about one resource: `Type/id`.'}
paths['/AuditEvent'] = {'get': op('Search the audit trail (operator role)', 'searchAuditEvent', ['Operator'], ['audit_count','audit_cursor','audit_entity'] + RENDER, None,
   {'200':{'description':'A searchset Bundle of AuditEvents, newest first.','content':fhir_content(sref('Bundle'))}, **codes_('400','401','403','406','500')})}
P['audit_id'] = {'name':'id','in':'path','required':True,'schema':{'type':'string'}}
paths['/AuditEvent/{id}'] = {'parameters':[pref('audit_id')],'get': op('Read an AuditEvent (operator role)', 'readAuditEvent', ['Operator'], RENDER, None,
   {'200':{'description':'The AuditEvent.','content':fhir_content(sref('Resource'))}, **codes_('400','401','403','404','406','500')})}

# conformance package
P['conformance_id'] = {'name':'id','in':'path','required':True,'schema':{'type':'string'}}
for ct in ['StructureDefinition','ValueSet','CodeSystem']:
    paths[f'/{ct}'] = {'get': op(f'Search the package\'s {ct}s', f'search{ct}', ['Conformance'], ['conformance_url'] + RENDER, None,
        {'200':{'description':f'A searchset Bundle of the profile package\'s {ct}s.','content':fhir_content(sref('Bundle'))}, **codes_('400','401','406','500')},
        desc='Any authenticated client, whatever its scopes.')}
    paths[f'/{ct}/{{id}}'] = {'parameters':[pref('conformance_id')],'get': op(f'Read a {ct} of the package', f'read{ct}', ['Conformance'], RENDER, None,
        {'200':{'description':f'The {ct}.','content':fhir_content(sref('Resource'))}, **codes_('400','401','404','406','500')})}

# public endpoints
paths['/metadata'] = {'get': op('CapabilityStatement', 'capabilities', ['Discovery'], RENDER, None,
   {'200':{'description':'The CapabilityStatement.','content':fhir_content(sref('CapabilityStatement'))}, **codes_('406','500')}, security=[])}
paths['/.well-known/smart-configuration'] = {'get': op('SMART configuration', 'smartConfiguration', ['Discovery'], None, None,
   {'200':{'description':'SMART App Launch 2.x discovery (Backend Services).','content':{'application/json':{'schema':sref('SmartConfiguration')}}}}, security=[])}
paths['/.well-known/jwks.json'] = {'get': op('Access-token signing keys', 'jwks', ['Discovery'], None, None,
   {'200':{'description':'Public JWKS (old keys included while rotated out).','content':{'application/json':{'schema':sref('Jwks')}}}}, security=[])}
nostore = {'Cache-Control':{'schema':{'type':'string','const':'no-store'}}}
paths['/auth/token'] = {'post': op('Get an access token (SMART Backend Services)', 'token', ['Auth'], None,
   {'required':True,'content':{'application/x-www-form-urlencoded':{'schema':sref('TokenRequest')}}},
   {'200':{'description':'An access token (`at+jwt`, ES384, at most 5 minutes).','headers':{**nostore,'Pragma':{'schema':{'type':'string','const':'no-cache'}}},'content':{'application/json':{'schema':sref('TokenResponse')}}},
    '400':{'description':'Refused (RFC 6749 section 5.2): every client error, including invalid_client, is a 400.','headers':nostore,'content':{'application/json':{'schema':sref('OAuthError')}}},
    '429':{'description':'Refused, `invalid_client`, after 20 failed requests for this `client_id` in 60 s (per server process) until the window ends: wait `Retry-After` seconds. A correctly signed assertion is still served.','headers':{**nostore,'Retry-After':href('Retry-After')},'content':{'application/json':{'schema':sref('OAuthError')}}},
    '500':{'description':'Server error (`server_error`).','headers':nostore,'content':{'application/json':{'schema':sref('OAuthError')}}},
    '503':{'description':'The database is unavailable just now (`server_error`); retry after `Retry-After`.','headers':{**nostore,'Retry-After':href('Retry-After')},'content':{'application/json':{'schema':sref('OAuthError')}}}},
   desc='client_credentials grant with a `private_key_jwt` client assertion. The body is parsed as a form whatever its Content-Type.', security=[])}
paths['/healthz'] = {'get': op('Liveness probe', 'healthz', ['Probes'], None, None,
   {'200':{'description':'The process serves HTTP.','content':{'application/json':{'schema':sref('Probe'),'example':{'status':'ok'}}}}}, security=[])}
paths['/metrics'] = {'get': op('Prometheus metrics', 'metrics', ['Probes'], None, None,
   {'200':{'description':'Prometheus text exposition format 0.0.4: request counts and durations by route template, token refusals, database pool, outbox depth, group commit batches. Counts only, no identifiers; keep it off the public side of the load balancer.',
           'content':{'text/plain':{'schema':{'type':'string'}}}},
    **codes_('500','503')}, security=[])}
DOCS_ASSETS = ['swagger-ui-bundle.js','swagger-ui.css','init.js','LICENSE']
paths['/docs'] = {'get': op('API reference (Swagger UI)', 'docs', ['Docs'], None, None,
   {'200':{'description':'An HTML page showing this contract; its scripts and styles come from /docs/{asset} (no other site).','content':{'text/html':{'schema':{'type':'string'}}}}}, security=[])}
P['docs_asset'] = {'name':'asset','in':'path','required':True,'schema':{'type':'string','enum':DOCS_ASSETS},'description':'A vendored Swagger UI file (npm swagger-ui-dist, Apache-2.0).'}
paths['/docs/{asset}'] = {'parameters':[pref('docs_asset')],'get': op('API reference assets', 'docsAsset', ['Docs'], None, None,
   {'200':{'description':'The file.','content':{'text/javascript':{'schema':{'type':'string'}},'text/css':{'schema':{'type':'string'}},'text/plain':{'schema':{'type':'string'}}}},
    '404':rref('NotFound')}, security=[])}
paths['/openapi.yaml'] = {'get': op('This contract', 'openapi', ['Docs'], None, None,
   {'200':{'description':'This OpenAPI document, with `servers` naming the server that serves it.','content':{'application/yaml':{'schema':{'type':'object','required':['openapi','info','paths'],'properties':{'openapi':{'type':'string','const':'3.1.0'}}}}}}}, security=[])}
paths['/readyz'] = {'get': op('Readiness probe', 'readyz', ['Probes'], None, None,
   {'200':{'description':'The database answers and a write could commit now (checked at most once a second).','content':{'application/json':{'schema':sref('Probe'),'example':{'status':'ready'}}}},
    '503':{'description':'The database is unreachable, or cannot write (read-only, a standby, its files not writable, the disk full); `reason` says which.','headers':{'Retry-After':href('Retry-After')},'content':{'application/json':{'schema':sref('Probe'),'example':{'status':'database cannot write','reason':'the database is unavailable: the database\'s transactions are read-only (default_transaction_read_only)'}}}}}, security=[])}

SCOPES = {'system/*.cruds':'Create, read, update, delete and search every type the client\'s registration allows.',
          'system/*.rs':'Read and search every type.',
          'system/Task.rus':'Read, update and search Tasks (a CLW tool).',
          'system/ServiceRequest.crus':'Create, read, update and search ServiceRequests.',
          'system/CarePlan.crus':'Create, read, update and search CarePlans.',
          'system/Patient.crus':'Create, read, update and search Patients.'}

doc = {
 'openapi':'3.1.0',
 'info':{'title':'linkbridge FHIR R4 API','version':'0.1.0',
   'summary':'FHIR R4 exchange of social prescribing referrals between GP practices and Community Link Worker services.',
   'description':(
     'The HTTP contract of linkbridge, checked against the server\'s routes (tests/api/openapi.rs) and against a running server (tools/contract/run.sh, schemathesis).\n\n'
     '* FHIR R4 (4.0.1) RESTful API: `application/fhir+json` (default) and `application/fhir+xml`, chosen by `_format` then `Accept`; `_pretty=true` indents.\n'
     '* Request bodies are parsed strictly: unknown elements, wrong JSON types, missing required elements, malformed primitives and codes outside required bindings are 400. '
     'The resource schemas here name the elements linkbridge uses and leave the others open (`additionalProperties`) for brevity: an element is accepted only if FHIR R4 defines it for that type, anything else is a 400.\n'
     '* FHIR JSON (R4 json.html): no empty arrays, empty strings or empty objects, in requests (400) or responses.\n'
     '* A successful create, update or patch with `Prefer: return=minimal` has no body (and so no `Content-Type`), whatever its response below says.\n'
     '* Every error of the FHIR endpoints is an `OperationOutcome` served as `application/fhir+json`.\n'
     '* Any method a path does not list answers **405** with an OperationOutcome; an unknown path or resource type answers 404.\n'
     '* Every FHIR endpoint needs a SMART Backend Services access token; every organisation sees only its own data (another organisation\'s resource is a 404).\n'
     '* Every read, search and refused attempt is audited before the response is sent; if it cannot be, the answer is 503 with `Retry-After`.\n'
     '* The server never answers 429.'),
   'license':{'name':'MIT OR Apache-2.0','identifier':'MIT OR Apache-2.0'}},
 'servers':[{'url':'http://127.0.0.1:8080','description':'Local default (`listen = 127.0.0.1:8080`).'}],
 'security':[{'smart':[]},{'bearer':[]}],
 'tags':[{'name':rt} for rt in TYPES] + [{'name':n} for n in ['System','Operator','Conformance','Discovery','Auth','Probes','Docs']],
 'paths':paths,
 'components':{
   'securitySchemes':{
     'smart':{'type':'oauth2','description':(
        'SMART Backend Services: the client authenticates to the token endpoint with `private_key_jwt` '
        '(`client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`, a JWT signed with its registered key, RS384/ES384/RS512) '
        'and the `client_credentials` grant. Scopes are SMART v2 `system/<Type|*>.<cruds>`, enforced per interaction '
        '(c create, r read/vread/history-instance, u update/patch, d delete, s search/history-type); a missing scope is a 403 `insufficient_scope`. '
        'Discovery: /.well-known/smart-configuration.'),
       'flows':{'clientCredentials':{'tokenUrl':'/auth/token','scopes':SCOPES}}},
     'bearer':{'type':'http','scheme':'bearer','bearerFormat':'JWT','description':'The same access token as `smart`, for tools that take a ready-made token.'}},
   'schemas':S,'parameters':P,'responses':R,'headers':H}}

class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data): return True
def str_presenter(dumper, data):
    if '\n' in data: return dumper.represent_scalar('tag:yaml.org,2002:str', data, style='|')
    return dumper.represent_scalar('tag:yaml.org,2002:str', data)
Dumper.add_representer(str, str_presenter)
def _short(data):
    try: s = json.dumps(data, ensure_ascii=False)
    except TypeError: return False
    return len(s) <= 100 and '\\n' not in s
def dict_presenter(dumper, data):
    return dumper.represent_mapping('tag:yaml.org,2002:map', data.items(), flow_style=_short(data))
def list_presenter(dumper, data):
    return dumper.represent_sequence('tag:yaml.org,2002:seq', data, flow_style=_short(data))
Dumper.add_representer(dict, dict_presenter)
Dumper.add_representer(list, list_presenter)
out = ROOT/'openapi/linkbridge.openapi.yaml'
out.parent.mkdir(exist_ok=True)
header = ('# linkbridge OpenAPI 3.1 contract. GENERATED by tools/gen_openapi.py: do not edit, regenerate.\n'
          '# Checked against the routes by tests/api/openapi.rs and against a running server by tools/contract/run.sh.\n')
out.write_text(header + yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=160))
print('written', out, len(out.read_text().splitlines()), 'lines')
