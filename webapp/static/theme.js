"use strict";
// Light or dark: "auto" follows the system; a choice is remembered in this browser.
// Loaded in <head> so the page never flashes the wrong colours.
(function () {
  const KEY = "llama-farm-theme";
  const ORDER = ["auto", "light", "dark"];
  function stored() {
    try { return localStorage.getItem(KEY) || "auto"; } catch (e) { return "auto"; }
  }
  function apply(theme) {
    if (theme === "auto") delete document.documentElement.dataset.theme;
    else document.documentElement.dataset.theme = theme;
  }
  apply(stored());
  window.farmTheme = {
    current: stored,
    next() {
      const theme = ORDER[(ORDER.indexOf(stored()) + 1) % ORDER.length];
      try { localStorage.setItem(KEY, theme); } catch (e) { /* private mode: this page only */ }
      apply(theme);
      return theme;
    },
  };
})();
