// Rows -> one Parquet file of the contract (contract/vectors.py vector_schema): the same columns, types and
// nullability as the Python edge writes (pyarrow reads them back as the same Arrow types: list<element: float>,
// timestamp[us, UTC], int32, strings), dictionary encoding only on the repeating text columns (parquet_options), the
// fingerprint in the key-value metadata. Written by hyparquet-writer (pure JavaScript, ~40 kB minified) for this one
// schema, read back by hyparquet: before, parquet-wasm (arrow-rs in Wasm) and apache-arrow were 5.6 MB of the first
// visit's download for the same file. SNAPPY pages (the writer's own compressor; zstd, which the Python side uses,
// has no compressor in the page, and float vectors hardly compress: 1% either way).

import {parquetMetadata, parquetReadObjects} from 'hyparquet';
import {parquetWriteBuffer} from 'hyparquet-writer';

const text = (name, required = false) => ({name, type: 'BYTE_ARRAY', converted_type: 'UTF8', logical_type: {type: 'STRING'},
                                           repetition_type: required ? 'REQUIRED' : 'OPTIONAL'});

/** The Parquet schema of a vectors file: vector_schema's, column for column. */
function schema() {
  return [
    {name: 'schema', num_children: 10},
    text('image_id', true), text('label'), text('source'),
    {name: 'width', type: 'INT32', repetition_type: 'OPTIONAL'},
    {name: 'height', type: 'INT32', repetition_type: 'OPTIONAL'},
    {name: 'features', repetition_type: 'OPTIONAL', converted_type: 'LIST', logical_type: {type: 'LIST'}, num_children: 1},
    {name: 'list', repetition_type: 'REPEATED', num_children: 1},
    {name: 'element', type: 'FLOAT', repetition_type: 'OPTIONAL'},
    text('model_sha256'), text('model_name'), text('client_id'),
    {name: 'vectorized_at', type: 'INT64', repetition_type: 'OPTIONAL',
     logical_type: {type: 'TIMESTAMP', isAdjustedToUTC: true, unit: 'MICROS'}},
  ];
}

/**
 * Contract rows ({imageId, label, source, width, height, features, vectorizedAt (ms)}) of one model and one
 * client -> Parquet bytes (Uint8Array).
 */
export async function writeVectors(contract, rows, {modelSha256, modelName, clientId}) {
  const dim = contract.feature_dim;
  for (const r of rows) {
    if (r.features.length !== dim) throw new Error(`${r.source}: ${r.features.length} features, expected ${dim}`);
  }
  const keys = contract.metadata_keys;
  const dictionary = new Set(contract.dictionary_columns);
  const column = (name, data) => ({name, data, encoding: dictionary.has(name) ? 'RLE_DICTIONARY' : 'PLAIN'});
  const buffer = parquetWriteBuffer({
    schema: schema(),
    columnData: [
      column('image_id', rows.map((r) => r.imageId)),
      column('label', rows.map((r) => r.label ?? null)),
      column('source', rows.map((r) => r.source ?? null)),
      column('width', rows.map((r) => r.width ?? null)),
      column('height', rows.map((r) => r.height ?? null)),
      column('features', rows.map((r) => Array.from(r.features))),
      column('model_sha256', rows.map(() => modelSha256)),
      column('model_name', rows.map(() => modelName)),
      column('client_id', rows.map(() => clientId)),
      column('vectorized_at', rows.map((r) => (r.vectorizedAt === null || r.vectorizedAt === undefined ? null
        : BigInt(Math.round(r.vectorizedAt * 1000))))),
    ],
    kvMetadata: [{key: keys.contract_version, value: contract.contract_version},
                 {key: keys.model_sha256, value: modelSha256}, {key: keys.model_name, value: modelName}],
    statistics: false,
    rowGroupSize: Math.max(1, rows.length),
    createdBy: 'fruits web app (hyparquet-writer)',
  });
  return new Uint8Array(buffer);
}

/** A contract Parquet file the page wrote -> its rows ({imageId, label, source, width, height, features,
 *  vectorizedAt (ms), clientId, modelSha256}) and the file's key-value metadata (a Map); throws on anything that is
 *  not Parquet. */
export async function readVectors(bytes) {
  const u8 = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const file = u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength);
  const meta = parquetMetadata(file);
  const names = meta.schema.map((s) => s.name);
  for (const name of ['image_id', 'label', 'source', 'width', 'height', 'features', 'model_sha256', 'client_id',
                      'vectorized_at']) {
    if (!names.includes(name)) throw new Error(`no column ${name}`);
  }
  const objects = await parquetReadObjects({file, metadata: meta, utf8: true});
  const rows = objects.map((o) => ({
    imageId: o.image_id, label: o.label ?? null, source: o.source ?? null, width: o.width ?? null,
    height: o.height ?? null, features: o.features ? Float32Array.from(o.features) : null, modelSha256: o.model_sha256,
    clientId: o.client_id, vectorizedAt: o.vectorized_at === null || o.vectorized_at === undefined ? null
      : vectorizedMs(o.vectorized_at)}));
  return {rows, metadata: new Map((meta.key_value_metadata || []).map((kv) => [kv.key, kv.value]))};
}

/** hyparquet gives a TIMESTAMP(MICROS) as a Date (or the raw BigInt): milliseconds either way. */
function vectorizedMs(v) {
  if (v instanceof Date) return v.getTime();
  return Number(BigInt(v) / 1000n);
}
