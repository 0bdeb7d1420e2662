// Shows the "wrong token" line after a refused login (/login?error=1). No inline scripts: the CSP forbids them.
if (new URLSearchParams(location.search).has('error')) document.getElementById('login-error').hidden = false;
