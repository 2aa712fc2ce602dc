#!/usr/bin/env node
// Compile contracts/FLB.sol with the pinned solcjs (standard-JSON) into artifacts/FLB.json.
// Usage: node compile.js [--out FILE]   (run `npm ci` in chain/ first)
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const CHAIN_DIR = __dirname;
const SOURCE = "contracts/FLB.sol";
const CONTRACT = "FLB";
const SETTINGS = {
  evmVersion: "cancun", // solc 0.8.37 defaults to osaka, which py-evm and public chains reject
  optimizer: { enabled: true, runs: 200 },
  viaIR: true, // recordRound's seven calldata arguments are too deep for the legacy code generator
  outputSelection: { "*": { "*": ["abi", "metadata", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function findImports(importPath) {
  const file = path.join(CHAIN_DIR, "node_modules", importPath);
  if (!fs.existsSync(file)) return { error: `import ${importPath} not found; run: cd chain && npm ci` };
  return { contents: fs.readFileSync(file, "utf8") };
}

function compile() {
  const input = {
    language: "Solidity",
    sources: { [SOURCE]: { content: fs.readFileSync(path.join(CHAIN_DIR, SOURCE), "utf8") } },
    settings: SETTINGS,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(errors.map((e) => e.formattedMessage).join("\n"));
  const contract = output.contracts[SOURCE][CONTRACT];
  return {
    contractName: CONTRACT,
    sourceName: SOURCE,
    compiler: { name: "solc", version: solc.version(), settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer, viaIR: SETTINGS.viaIR } },
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
    metadata: contract.metadata, // solc's metadata JSON: what Sourcify/Etherscan need to verify the deployed code
  };
}

function main() {
  const outIndex = process.argv.indexOf("--out");
  const out = outIndex > 0 ? process.argv[outIndex + 1] : path.join(CHAIN_DIR, "artifacts", `${CONTRACT}.json`);
  fs.writeFileSync(out, JSON.stringify(compile(), null, 2) + "\n");
  console.log(`wrote ${out}`);
}

main();
