// Issue 6, acceptance 3: @dfinity/agent 3.x (v3 call with v2 fallback, v2 query and
// read_state) against a cairn subnet started by cairn-sim.
//
// usage: node test.mjs <root key hex> <testdata dir> <node url>...
// The Rust test e2e/tests/npm_agent.rs starts cairn-sim and runs this script.

import { Actor, HttpAgent, CanisterStatus, polling } from '@dfinity/agent';
import { IDL } from '@dfinity/candid';
import { Ed25519KeyIdentity } from '@dfinity/identity';
import { Principal } from '@dfinity/principal';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';

const [rootKeyHex, testdata, ...urls] = process.argv.slice(2);
assert.ok(rootKeyHex && testdata && urls.length >= 2, 'usage: test.mjs <root key hex> <testdata> <url>...');

const hex = (bytes) => Buffer.from(bytes).toString('hex');
const log = (...a) => console.log('js-agent:', ...a);

// The management canister methods this test needs.
const canisterSettings = IDL.Record({
  controllers: IDL.Opt(IDL.Vec(IDL.Principal)),
  compute_allocation: IDL.Opt(IDL.Nat),
  memory_allocation: IDL.Opt(IDL.Nat),
  freezing_threshold: IDL.Opt(IDL.Nat),
});
const mgmtIdl = ({ IDL }) =>
  IDL.Service({
    provisional_create_canister_with_cycles: IDL.Func(
      [IDL.Record({ amount: IDL.Opt(IDL.Nat), settings: IDL.Opt(canisterSettings) })],
      [IDL.Record({ canister_id: IDL.Principal })],
      [],
    ),
    install_code: IDL.Func(
      [
        IDL.Record({
          mode: IDL.Variant({
            install: IDL.Null,
            reinstall: IDL.Null,
            upgrade: IDL.Opt(
              IDL.Record({
                skip_pre_upgrade: IDL.Opt(IDL.Bool),
                wasm_memory_persistence: IDL.Opt(IDL.Variant({ keep: IDL.Null, replace: IDL.Null })),
              }),
            ),
          }),
          canister_id: IDL.Principal,
          wasm_module: IDL.Vec(IDL.Nat8),
          arg: IDL.Vec(IDL.Nat8),
        }),
      ],
      [],
      [],
    ),
  });

// The Motoko counter (canisters/motoko-counter/service.did).
const counterTypes = {
  get: { args: [], rets: [IDL.Nat], query: true },
  inc: { args: [], rets: [], query: false },
  set: { args: [IDL.Nat], rets: [], query: false },
};
const counterIdl = ({ IDL }) =>
  IDL.Service(
    Object.fromEntries(
      Object.entries(counterTypes).map(([m, t]) => [m, IDL.Func(t.args, t.rets, t.query ? ['query'] : [])]),
    ),
  );

const identity = Ed25519KeyIdentity.generate(new Uint8Array(32).fill(9));
const agents = [];
for (const host of urls) {
  // verifyQuerySignatures stays at its default (on).
  const agent = await HttpAgent.create({ host, identity, shouldFetchRootKey: true });
  assert.equal(hex(agent.rootKey), rootKeyHex, 'status serves the root key');
  agents.push(agent);
}
log(`root key fetched from ${agents.length} nodes`);

const mgmt = (agent, effectiveCanisterId) =>
  Actor.createActor(mgmtIdl, {
    agent,
    canisterId: Principal.managementCanister(),
    ...(effectiveCanisterId ? { effectiveCanisterId } : {}),
  });

const { canister_id: canisterId } = await mgmt(agents[0]).provisional_create_canister_with_cycles({
  amount: [100_000_000_000_000n],
  settings: [],
});
log(`created ${canisterId.toText()} via node 0`);

const wasm = readFileSync(`${testdata}/canisters/motoko-counter/module.wasm`);
const scenario = JSON.parse(readFileSync(`${testdata}/canisters/scenarios.json`, 'utf8')).scenarios['motoko-counter'];
const emptyArgs = new Uint8Array(IDL.encode([], []));

let i = 0;
for (const step of scenario) {
  const n = i % agents.length;
  const agent = agents[n];
  const arg = step.arg ? Uint8Array.from(Buffer.from(step.arg, 'hex')) : emptyArgs;
  if (step.op === 'install' || step.op === 'upgrade') {
    const mode =
      step.op === 'install'
        ? { install: null }
        : { upgrade: [{ skip_pre_upgrade: [], wasm_memory_persistence: [{ keep: null }] }] };
    await mgmt(agent, canisterId).install_code({ mode, canister_id: canisterId, wasm_module: wasm, arg });
  } else {
    const t = counterTypes[step.method];
    assert.ok(t, `method ${step.method} in the counter's interface`);
    const counter = Actor.createActor(counterIdl, { agent, canisterId });
    const args = IDL.decode(t.args, arg);
    const result = await counter[step.method](...args);
    const values = t.rets.length === 0 ? [] : [result];
    const reply = hex(IDL.encode(t.rets, values));
    assert.equal(reply, step.observed.reply_hex, `step ${i}: ${step.op} ${step.method}`);
  }
  log(`step ${i}: ${step.op}${step.method ? ' ' + step.method : ''} ok via node ${n}`);
  i += 1;
}

// read_state of /canister/<id>/module_hash (v2 read_state) through node 2.
const status = await CanisterStatus.request({ canisterId, agent: agents[2], paths: ['module_hash'] });
const moduleHash = status.get('module_hash');
assert.equal(moduleHash, createHash('sha256').update(wasm).digest('hex'), 'module_hash is SHA-256 of the module');
log('module_hash verified');

// An update submitted to node 1; its certified request status read through node 3.
const { requestId } = await agents[1].call(canisterId, {
  methodName: 'inc',
  arg: emptyArgs,
  effectiveCanisterId: canisterId,
  callSync: false,
});
const { reply } = await polling.pollForResponse(agents[3], canisterId, requestId);
assert.equal(hex(reply), hex(emptyArgs));
const counter = Actor.createActor(counterIdl, { agent: agents[0], canisterId });
assert.equal(await counter.get(), 46n);
log('request status verified; counter = 46');
log('ok');
