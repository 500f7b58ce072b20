// Renders /openapi.json as a readable page: no framework, no network beyond this gateway.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function resolve(doc, schema) {
  if (schema && schema.$ref) return doc.components.schemas[schema.$ref.split("/").pop()];
  return schema;
}

function schemaText(doc, schema, depth = 0) {
  schema = resolve(doc, schema);
  if (!schema || depth > 6) return {};
  if (schema.type === "object" && schema.properties) {
    const out = {};
    for (const [name, prop] of Object.entries(schema.properties)) {
      const required = (schema.required || []).includes(name) ? "" : "?";
      out[name + required] = schemaText(doc, prop, depth + 1);
    }
    return out;
  }
  if (schema.type === "array") return [schemaText(doc, schema.items, depth + 1)];
  if (schema.anyOf) return schema.anyOf.map((s) => schemaText(doc, s, depth + 1));
  const limits = ["minimum", "maximum", "minLength", "maxLength", "pattern", "enum"]
    .filter((k) => k in schema).map((k) => `${k}=${JSON.stringify(schema[k])}`);
  return [schema.type || "any", ...limits].join(" ");
}

function operationView(doc, path, method, op) {
  const who = op.security ? op.security.map((s) => Object.keys(s)[0]).join(", ") : "public";
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  if (op.parameters && op.parameters.length) {
    const rows = op.parameters.map((p) =>
      el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
        el("td", {}, p.required ? "required" : "optional"), el("td", {}, p.description || "")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    body.append(el("h4", {}, "Body"), el("pre", {}, JSON.stringify(schemaText(doc, schema), null, 2)));
  }
  for (const [status, response] of Object.entries(op.responses)) {
    const content = response.content && Object.values(response.content)[0];
    const text = content && content.schema ? JSON.stringify(schemaText(doc, content.schema), null, 2) : "";
    body.append(el("h4", {}, `${status} ${response.description}`));
    if (text && status.startsWith("2")) body.append(el("pre", {}, text));
  }
  return el("details", {},
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", {}, op.summary || ""), el("span", { class: "who" }, who)),
    body);
}

async function main() {
  const root = document.getElementById("api");
  const doc = await (await fetch("/openapi.json")).json();
  root.textContent = "";
  const byTag = {};
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      (byTag[op.tags[0]] = byTag[op.tags[0]] || []).push([path, method, op]);
    }
  }
  for (const [tag, ops] of Object.entries(byTag)) {
    root.append(el("h2", {}, tag), ...ops.map(([p, m, o]) => operationView(doc, p, m, o)));
  }
  const rows = doc["x-error-codes"].map((e) =>
    el("tr", {}, el("td", {}, el("code", {}, e.code)), el("td", {}, String(e.status)), el("td", {}, e.message)));
  root.append(el("h2", {}, "error codes"), el("table", {}, el("tr", {}, el("th", {}, "code"),
    el("th", {}, "status"), el("th", {}, "meaning")), ...rows));
}

main().catch((err) => { document.getElementById("api").textContent = "Could not load /openapi.json: " + err; });
