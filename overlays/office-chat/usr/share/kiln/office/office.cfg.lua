-- kiln office-chat layer: XMPP for the office's people, NAME@@DOMAIN@, passwords checked by
-- binding to the directory (mod_auth_ldap, lua-ldap); TLS with the certificate made on the box
-- at first boot (copied for Prosody by chat-init, which renders this file to
-- /etc/prosody/conf.d/office.cfg.lua with the site's domain).
VirtualHost "@DOMAIN@"
    authentication = "ldap"
    ldap_server = "127.0.0.1"
    ldap_base = "ou=people,@BASE@"
    ldap_filter = "(&(objectClass=posixAccount)(uid=$user))"
    ldap_mode = "bind"
    ssl = {
        certificate = "/etc/prosody/certs/office.crt";
        key = "/etc/prosody/certs/office.key";
    }
