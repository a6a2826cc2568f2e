// A kind's input JSON Schema (from GET /v1/kinds) read for the submit form: an
// example input built from it, and its properties described for the help text.
// Pure functions, no DOM. Handles what schema generators emit: $ref into
// `definitions`/`$defs`, allOf, nullable anyOf/oneOf and `type: [t, "null"]`.

/** Deeper than this, nested schemas give a plain placeholder (recursive types). */
const MAX_DEPTH = 8;

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);

/** The node a local `$ref` (`#/definitions/Input`, `#/$defs/Source`) points at, or {}. */
function lookup(root, ref) {
  if (!ref.startsWith('#')) return {};
  let node = root;
  for (const raw of ref.slice(1).split('/').filter(Boolean)) {
    const key = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    node = isObject(node) ? node[key] : undefined;
  }
  return isObject(node) ? node : {};
}

const isNullSchema = (s) => isObject(s) && (s.type === 'null' || ('const' in s && s.const === null));

/**
 * `s` with its `$ref` followed, `allOf` merged and a nullable union reduced to
 * its non-null alternative; the outer schema's own keywords (description,
 * default…) win over the target's.
 */
export function resolve(s, root, depth = 0) {
  if (!isObject(s) || depth > MAX_DEPTH) return {};
  if (typeof s.$ref === 'string') {
    const { $ref, ...own } = s;
    return resolve({ ...lookup(root, $ref), ...own }, root, depth + 1);
  }
  if (Array.isArray(s.allOf) && s.allOf.length) {
    const { allOf, ...own } = s;
    const merged = { properties: {}, required: [] };
    for (const part of allOf) {
      const r = resolve(part, root, depth + 1);
      Object.assign(merged.properties, r.properties || {});
      merged.required.push(...(r.required || []));
      for (const [k, v] of Object.entries(r)) if (k !== 'properties' && k !== 'required') merged[k] = v;
    }
    Object.assign(merged.properties, own.properties || {});
    merged.required.push(...(own.required || []));
    if (!Object.keys(merged.properties).length) delete merged.properties;
    return { ...merged, ...own, properties: merged.properties, required: merged.required };
  }
  for (const key of ['anyOf', 'oneOf']) {
    if (Array.isArray(s[key]) && s[key].length && !s.type && !s.properties) {
      const { [key]: alternatives, ...own } = s;
      const pick = alternatives.find((a) => !isNullSchema(a)) ?? alternatives[0];
      return { ...resolve(pick, root, depth + 1), ...own };
    }
  }
  return s;
}

/** The schema's type as one word (`type: ["integer", "null"]` → integer), or null. */
export function typeOf(s) {
  let t = s.type;
  if (Array.isArray(t)) t = t.find((x) => x !== 'null') ?? t[0];
  if (typeof t === 'string') return t;
  if (isObject(s.properties)) return 'object';
  if (s.items) return 'array';
  return null;
}

/** Today's date as YYYY-MM-DD in local time (a `format: date` placeholder). */
function today() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

function numberExample(s, integer) {
  let n = 0;
  if (typeof s.minimum === 'number') n = s.minimum;
  else if (typeof s.exclusiveMinimum === 'number') n = s.exclusiveMinimum + (integer ? 1 : 0.5);
  else if (typeof s.maximum === 'number' && s.maximum < 0) n = s.maximum;
  else if (typeof s.exclusiveMaximum === 'number' && s.exclusiveMaximum <= 0) n = s.exclusiveMaximum - 1;
  return integer ? Math.ceil(n) : n;
}

function stringExample(s) {
  switch (s.format) {
    case 'date': return today();
    case 'date-time': return new Date().toISOString();
    case 'time': return '00:00:00';
    case 'uri': case 'url': return 'https://example.com/';
    case 'email': return 'someone@example.com';
    case 'uuid': return '00000000-0000-0000-0000-000000000000';
    default: return typeof s.minLength === 'number' && s.minLength > 0 ? 'x'.repeat(s.minLength) : '';
  }
}

/** The value the schema documents itself (const, default, examples, enum), if any. */
function documentedValue(s) {
  if ('const' in s) return { value: s.const };
  if ('default' in s && s.default !== null) return { value: s.default };
  if (Array.isArray(s.examples) && s.examples.length) return { value: s.examples[0] };
  if ('example' in s) return { value: s.example };
  if (Array.isArray(s.enum) && s.enum.length) return { value: s.enum[0] };
  return null;
}

function objectExample(s, root, depth) {
  const props = isObject(s.properties) ? s.properties : {};
  const required = Array.isArray(s.required) ? s.required : [];
  // The required properties; when there are none, the ones with a documented
  // value, so the editor still shows what can be set.
  let keys = required;
  if (!keys.length) keys = Object.keys(props).filter((k) => documentedValue(resolve(props[k], root, depth + 1)));
  const out = {};
  for (const key of keys) out[key] = exampleValue(props[key], root, depth + 1);
  return out;
}

/** An example value for schema `schema` (resolved against `root`). */
export function exampleValue(schema, root, depth = 0) {
  const s = resolve(schema, root, depth);
  const documented = documentedValue(s);
  if (documented) return documented.value;
  if (depth > MAX_DEPTH) return null;
  switch (typeOf(s)) {
    case 'object': return objectExample(s, root, depth);
    case 'array': {
      if (!s.items || Array.isArray(s.items)) return [];
      const n = Math.max(1, Math.min(Number(s.minItems) || 1, 3));
      return Array.from({ length: n }, () => exampleValue(s.items, root, depth + 1));
    }
    case 'integer': return numberExample(s, true);
    case 'number': return numberExample(s, false);
    case 'boolean': return false;
    case 'string': return stringExample(s);
    default: return null;
  }
}

/** An example input for a kind: the schema's own `examples[0]`, else one built from it. */
export function exampleInput(schema) {
  if (!isObject(schema)) return {};
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  const v = exampleValue(schema, schema);
  return v === null ? {} : v;
}

/** "integer, 1..=1000" / "string (date)" / "one of a, b": a property's type in a few words. */
function typeLabel(s) {
  const t = typeOf(s);
  if (Array.isArray(s.enum)) return `one of ${s.enum.map((v) => JSON.stringify(v)).join(', ')}`;
  let label = t || 'any';
  if (t === 'array' && isObject(s.items)) {
    const it = typeOf(s.items) || (s.items.$ref ? s.items.$ref.split('/').pop() : null);
    if (it) label = `array of ${it}`;
  }
  // A string's format says something (date, uri); a number's (int32, double) does not.
  if (t === 'string' && s.format) label += ` (${s.format})`;
  const num = (v) => typeof v === 'number';
  if (num(s.minimum) && num(s.maximum)) return `${label}, ${s.minimum}..=${s.maximum}`;
  const bounds = [
    num(s.minimum) ? `≥ ${s.minimum}` : null, num(s.exclusiveMinimum) ? `> ${s.exclusiveMinimum}` : null,
    num(s.maximum) ? `≤ ${s.maximum}` : null, num(s.exclusiveMaximum) ? `< ${s.exclusiveMaximum}` : null,
  ].filter(Boolean);
  return bounds.length ? `${label}, ${bounds.join(', ')}` : label;
}

/**
 * The schema's top-level description and its properties, for the help text:
 * {description, fields: [{name, type, required, description, default}]}.
 */
export function describeInput(schema) {
  if (!isObject(schema)) return { description: '', fields: [] };
  const s = resolve(schema, schema);
  const required = new Set(Array.isArray(s.required) ? s.required : []);
  const props = isObject(s.properties) ? s.properties : {};
  const fields = Object.entries(props).map(([name, raw]) => {
    const p = resolve(raw, schema, 1);
    return {
      name,
      type: typeLabel(p),
      required: required.has(name),
      description: typeof p.description === 'string' ? p.description : (p.title || ''),
      default: 'default' in p && p.default !== null ? JSON.stringify(p.default) : null,
    };
  });
  // Required first, each group in the schema's order.
  fields.sort((a, b) => Number(b.required) - Number(a.required));
  // Not the title: generators set it to the type's name (DemoInput).
  return { description: typeof s.description === 'string' ? s.description : '', fields };
}
