// The "Discover identities" view: GET /clusters, one row of thumbnails per cluster, and a name
// field that POSTs /clusters/{id}/label to enroll the cluster's images as one identity.
// Everything from the server is inserted with textContent (never innerHTML): ids and labels
// come from whoever ingested the images.
"use strict";

(() => {
  const q = (selector) => document.querySelector(selector);
  const searchView = q("#search-view");
  const clustersView = q("#clusters-view");
  const rows = q("#cluster-rows");
  const summaryBox = q("#clusters-summary");
  const errorBox = q("#clusters-error");
  const THUMBS = 12; // thumbnails per row; the rest is counted
  let options = {};

  function node(tag, className, text) {
    const made = document.createElement(tag);
    if (className) made.className = className;
    if (text !== undefined) made.textContent = text;
    return made;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  function showView() {
    const clusters = location.hash === "#clusters";
    clustersView.hidden = !clusters;
    searchView.hidden = clusters;
    for (const link of document.querySelectorAll("nav.views a")) {
      link.classList.toggle("active", link.dataset.view === (clusters ? "clusters" : "search"));
    }
    if (clusters && !rows.children.length) load();
  }

  function currentOptions() {
    const threshold = q("#cluster-threshold").value.trim();
    return {
      unlabeled_only: q("#unlabeled-only").checked,
      min_size: Number(q("#min-size").value) || 2,
      threshold: threshold === "" ? null : Number(threshold),
    };
  }

  function headers() {
    const token = q("#token").value.trim();
    const sent = { "Content-Type": "application/json" };
    if (token) sent.Authorization = `Bearer ${token}`;
    return sent;
  }

  function thumbnail(member) {
    const img = node("img");
    img.src = member.thumbnail_url;
    img.alt = member.label || member.id;
    img.title = member.label ? `${member.id} (${member.label})` : member.id;
    img.loading = "lazy";
    img.onerror = () => { img.style.visibility = "hidden"; };
    return img;
  }

  function row(cluster) {
    const item = node("li", "cluster-row");
    item.dataset.cluster = cluster.id;
    item.dataset.testid = "cluster";
    const labels = Object.entries(cluster.labels).map(([label, n]) => `${label} ×${n}`);
    const head = node("div", "cluster-head");
    head.append(node("span", "cluster-size", `${cluster.size} images`),
                node("span", "cluster-cohesion", `cohesion ${cluster.cohesion.toFixed(3)}`),
                node("span", "cluster-id", cluster.id));
    if (labels.length) head.append(node("span", "cluster-labels", `already: ${labels.join(", ")}`));
    const strip = node("div", "thumbs");
    strip.append(...cluster.members.slice(0, THUMBS).map(thumbnail));
    if (cluster.size > THUMBS) strip.append(node("span", "more", `+${cluster.size - THUMBS}`));
    const form = node("form", "name-cluster");
    const name = node("input");
    name.type = "text";
    name.required = true;
    name.placeholder = "who is this?";
    name.value = labels.length ? Object.keys(cluster.labels)[0] : "";
    name.dataset.testid = "cluster-label";
    const button = node("button", null, "Enroll as identity");
    button.type = "submit";
    const note = node("span", "cluster-note");
    note.dataset.testid = "cluster-note";
    form.append(name, button, note);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      label(cluster, name.value.trim(), item, note, button);
    });
    item.append(head, strip, form);
    return item;
  }

  async function label(cluster, name, item, note, button) {
    if (!name) return;
    button.disabled = true;
    note.textContent = "enrolling…";
    note.className = "cluster-note";
    try {
      const response = await fetch(`clusters/${encodeURIComponent(cluster.id)}/label`, {
        method: "POST",
        headers: headers(),
        body: JSON.stringify({ label: name, ids: cluster.members.map((m) => m.id), ...options }),
      });
      const body = await response.json().catch(() => ({ message: response.statusText }));
      if (!response.ok) throw new Error(body.message || `request failed (${response.status})`);
      note.textContent = `enrolled ${body.ids.length} image${body.ids.length === 1 ? "" : "s"} ` +
        `as “${body.label}” (${body.references} reference${body.references === 1 ? "" : "s"})`;
      note.className = "cluster-note done";
      item.classList.add("labelled");
    } catch (err) {
      note.textContent = err.message;
      note.className = "cluster-note bad";
      button.disabled = false;
    }
  }

  async function load() {
    options = currentOptions();
    const params = new URLSearchParams({ unlabeled_only: options.unlabeled_only,
                                         min_size: options.min_size });
    if (options.threshold !== null) params.set("threshold", options.threshold);
    showError("");
    summaryBox.textContent = "Finding clusters…";
    document.body.dataset.clusters = "busy";
    try {
      const response = await fetch(`clusters?${params}`);
      const body = await response.json().catch(() => ({ message: response.statusText }));
      if (!response.ok) {
        rows.replaceChildren();
        summaryBox.textContent = "";
        showError(body.message || `request failed (${response.status})`);
        return;
      }
      rows.replaceChildren(...body.clusters.map(row));
      const shown = body.clusters.length < body.total_clusters
        ? ` (the ${body.clusters.length} largest shown)` : "";
      summaryBox.textContent = `${body.total_clusters} cluster${body.total_clusters === 1 ? "" : "s"}` +
        `${shown} holding ${body.clustered} of ${body.items} images · threshold ` +
        `${body.threshold.toFixed(3)} · ${body.method}`;
      if (body.warning) showError(body.warning);
    } catch (err) {
      showError(`cannot reach the service: ${err.message}`);
      summaryBox.textContent = "";
    } finally {
      document.body.dataset.clusters = "done";
    }
  }

  q("#cluster-form").addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  window.addEventListener("hashchange", showView);
  showView();
})();
