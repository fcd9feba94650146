// Rows -> one Parquet file of the contract (contract/vectors.py): the same Arrow schema, zstd, dictionary
// encoding only on the repeating text columns (parquet_options), the fingerprint in the key-value metadata.
// Written by parquet-wasm (arrow-rs's writer compiled to Wasm) from an apache-arrow table: a maintained
// writer, not a hand-written one. The Wasm file is fetched only when a file is first written.

import {Field, Float32, Int32, List, Schema, Table, TimestampMicrosecond, Utf8, makeData, makeVector,
        tableFromIPC, tableToIPC} from 'apache-arrow';
import initParquet, {Compression, Table as WasmTable, WriterPropertiesBuilder, readParquet,
                     writeParquet} from 'parquet-wasm/esm';

let ready = null;

export function loadParquet(wasmUrl) {
  ready = ready || initParquet({module_or_path: wasmUrl});
  return ready;
}

function schema(contract, metadata) {
  const text = (name, nullable = true) => new Field(name, new Utf8(), nullable);
  return new Schema([
    text('image_id', false), text('label'), text('source'),
    new Field('width', new Int32(), true), new Field('height', new Int32(), true),
    new Field('features', new List(new Field('item', new Float32(), true)), true),
    text('model_sha256'), text('model_name'), text('client_id'),
    new Field('vectorized_at', new TimestampMicrosecond('UTC'), true),
  ], metadata);
}

// Columns are built from their buffers (as features are): apache-arrow's builders compile their null test with
// `new Function`, which the page's Content-Security-Policy (no 'unsafe-eval') refuses.
function validity(values) {
  const bitmap = new Uint8Array((values.length + 7) >> 3);
  let nulls = 0;
  values.forEach((v, i) => {
    if (v === null || v === undefined) nulls++;
    else bitmap[i >> 3] |= 1 << (i & 7);
  });
  return {nullCount: nulls, nullBitmap: nulls ? bitmap : undefined};
}

function utf8Vector(values) {
  const encoder = new TextEncoder();
  const parts = values.map((v) => (v === null || v === undefined ? new Uint8Array(0) : encoder.encode(String(v))));
  const offsets = new Int32Array(values.length + 1);
  parts.forEach((p, i) => { offsets[i + 1] = offsets[i] + p.length; });
  const data = new Uint8Array(offsets[values.length]);
  parts.forEach((p, i) => data.set(p, offsets[i]));
  return makeVector(makeData({type: new Utf8(), length: values.length, ...validity(values), valueOffsets: offsets, data}));
}

function int32Vector(values) {
  return makeVector(makeData({type: new Int32(), length: values.length, ...validity(values),
                              data: Int32Array.from(values, (v) => v ?? 0)}));
}

function microsVector(millis) {
  return makeVector(makeData({type: new TimestampMicrosecond('UTC'), length: millis.length, ...validity(millis),
                              data: BigInt64Array.from(millis, (v) => BigInt(Math.round((v ?? 0) * 1000)))}));
}

function featuresVector(rows, dim) {
  const values = new Float32Array(rows.length * dim);
  const offsets = new Int32Array(rows.length + 1);
  rows.forEach((r, i) => {
    if (r.features.length !== dim) throw new Error(`${r.source}: ${r.features.length} features, expected ${dim}`);
    values.set(r.features, i * dim);
    offsets[i + 1] = (i + 1) * dim;
  });
  const type = new List(new Field('item', new Float32(), true));
  const child = makeData({type: new Float32(), length: values.length, nullCount: 0, data: values});
  return makeVector(makeData({type, length: rows.length, nullCount: 0, valueOffsets: offsets, child}));
}

/**
 * Contract rows ({imageId, label, source, width, height, features, vectorizedAt (ms)}) of one model and one
 * client -> Parquet bytes (Uint8Array).
 */
export async function writeVectors(contract, rows, {modelSha256, modelName, clientId}) {
  await ready;
  const keys = contract.metadata_keys;
  const metadata = new Map([[keys.contract_version, contract.contract_version],
                            [keys.model_sha256, modelSha256], [keys.model_name, modelName]]);
  const s = schema(contract, metadata);
  const table = new Table(s, {
    image_id: utf8Vector(rows.map((r) => r.imageId)),
    label: utf8Vector(rows.map((r) => r.label ?? null)),
    source: utf8Vector(rows.map((r) => r.source)),
    width: int32Vector(rows.map((r) => r.width)),
    height: int32Vector(rows.map((r) => r.height)),
    features: featuresVector(rows, contract.feature_dim),
    model_sha256: utf8Vector(rows.map(() => modelSha256)),
    model_name: utf8Vector(rows.map(() => modelName)),
    client_id: utf8Vector(rows.map(() => clientId)),
    vectorized_at: microsVector(rows.map((r) => r.vectorizedAt)),
  });
  let props = new WriterPropertiesBuilder().setCompression(Compression.ZSTD).setDictionaryEnabled(false)
    .setKeyValueMetadata(metadata);
  for (const name of contract.dictionary_columns) props = props.setColumnDictionaryEnabled(name, true);
  const wasmTable = WasmTable.fromIPCStream(tableToIPC(table, 'stream'));
  return writeParquet(wasmTable, props.build());
}

/** A contract Parquet file the page wrote -> its rows ({imageId, label, source, width, height, features,
 *  vectorizedAt (ms), clientId, modelSha256}) and the file's metadata; throws on anything that is not Parquet. */
export async function readVectors(bytes) {
  await ready;
  const table = tableFromIPC(readParquet(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes)).intoIPCStream());
  const col = (name) => {
    const v = table.getChild(name);
    if (!v) throw new Error(`no column ${name}`);
    return v;
  };
  const [ids, labels, sources, widths, heights, features, shas, clients, times] =
    ['image_id', 'label', 'source', 'width', 'height', 'features', 'model_sha256', 'client_id', 'vectorized_at'].map(col);
  const rows = [];
  for (let i = 0; i < table.numRows; i++) {
    const f = features.get(i);
    rows.push({imageId: ids.get(i), label: labels.get(i), source: sources.get(i), width: widths.get(i),
               height: heights.get(i), features: f ? Float32Array.from(f.toArray()) : null,
               modelSha256: shas.get(i), clientId: clients.get(i), vectorizedAt: Number(times.get(i))});   // ms
  }
  return {rows, metadata: table.schema.metadata};
}
