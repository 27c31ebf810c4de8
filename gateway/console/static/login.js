// The login form: the key goes to the gateway once, which answers with a session cookie
// (HttpOnly: this page never sees it) and the key is dropped from the page.
const form = document.getElementById("login");
const error = document.getElementById("error");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const input = document.getElementById("key");
  const res = await fetch("/console/api/login", {
    method: "POST", credentials: "same-origin",
    headers: {"content-type": "application/json"},
    body: JSON.stringify({key: input.value}),
  });
  input.value = "";
  if (res.ok) {
    location.replace("/console/#/live");
    return;
  }
  const body = await res.json().catch(() => ({}));
  error.textContent = body.error || `login failed (${res.status})`;
});
