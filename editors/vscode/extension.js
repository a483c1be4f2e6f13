// The Formula extension: the TextMate grammar for highlighting, and `formula lsp` for the rest.
const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const [command, ...args] = vscode.workspace.getConfiguration("formula").get("command");
  client = new LanguageClient(
    "formula",
    "Formula",
    { command, args },
    { documentSelector: [{ scheme: "file", language: "formula" }] },
  );
  client.start();
  context.subscriptions.push(client);
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
