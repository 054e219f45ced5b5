// KubeSonar console: filters apply as soon as a choice changes; a false positive asks before it goes.
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form.filters select").forEach((s) => s.addEventListener("change", () => s.form.submit()));
  document.querySelectorAll("form[data-confirm]").forEach((f) => f.addEventListener("submit", (e) => {
    if (!window.confirm(f.dataset.confirm)) e.preventDefault();
  }));
});
