#!/bin/sh
# Packer provisioner for debian-12-packer: key-only SSH, no root login.
set -eu
sudo sed -i -E 's/^#?PasswordAuthentication .*/PasswordAuthentication no/; s/^#?PermitRootLogin .*/PermitRootLogin no/' /etc/ssh/sshd_config
