# kiln-site apply: find the site volume, validate its site.toml, and apply it (docs/site.md,
# "On the box"). Loaded by /usr/lib/kiln/kiln-site, whose parser and checks it uses. Every
# program is started without a shell and every file is written by rename, so a power cut leaves
# the old file or the new one.
use strict;
use warnings;

our ($PART_TYPE, $LABEL, $FILE, $VARS_FILE, $TEMPLATES, $ZONEINFO, $RUN, $NETWORK_DIR, $SUDOERS);

sub say_line { print STDOUT @_; return }

# The FAT volume label in a boot sector (FAT12/16 or FAT32 extended boot record), or undef.
sub fat_label {
    my ($dev) = @_;
    open my $fh, '<:raw', $dev or return undef;
    my $n = sysread $fh, my $bs, 512;
    close $fh;
    return undef unless defined $n && $n == 512 && substr($bs, 510, 2) eq "\x55\xAA";
    my $label;
    if (ord(substr $bs, 38, 1) == 0x29 && substr($bs, 54, 3) eq 'FAT') {
        $label = substr $bs, 43, 11;
    } elsif (ord(substr $bs, 66, 1) == 0x29 && substr($bs, 82, 5) eq 'FAT32') {
        $label = substr $bs, 71, 11;
    }
    $label =~ s/ +\z// if defined $label;
    return $label;
}

# The GPT type of a partition: from udev's database when udev has seen it, else one blkid probe.
sub part_type {
    my ($name, $dev) = @_;
    my $devno = read_line("/sys/class/block/$name/dev") // '';
    if (open my $db, '<', "/run/udev/data/b$devno") {
        while (my $l = <$db>) {
            return lc $1 if $l =~ /^E:ID_PART_ENTRY_TYPE=(\S+)/;
        }
    }
    open my $fh, '-|', 'blkid', '-p', '-s', 'PART_ENTRY_TYPE', '-o', 'value', '--', $dev or return '';
    my $type = <$fh> // '';
    close $fh;
    chomp $type;
    return lc $type;
}

# Seconds since boot, to 10 ms (Time::HiRes is not in perl-base).
sub uptime { return (split ' ', read_line('/proc/uptime') // '0')[0] }

sub read_all {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    local $/;
    my $text = <$fh>;
    close $fh;
    return $text;
}

sub read_line {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    my $l = <$fh>;
    close $fh;
    chomp $l if defined $l;
    return $l;
}

# The site volume's device: a partition named KILN-SITE of kiln's type first, then any FAT
# volume labelled KILN-SITE. Boot time matters, so nothing waits and no prober runs: the block
# devices present are listed from sysfs and each one's first sector read once.
sub find_volume {
    opendir my $dh, '/sys/class/block' or return undef;
    my @names = sort grep { !/^\./ && !/^(?:ram|zram)\d/ } readdir $dh;
    closedir $dh;
    my ($partition, $volume);
    for my $name (@names) {
        next unless (read_line("/sys/class/block/$name/size") // 0) > 0;
        (my $dev = "/dev/$name") =~ tr{!}{/};
        my $label = fat_label($dev) // next;
        my ($partname) = (read_all("/sys/class/block/$name/uevent") // '') =~ /^PARTNAME=(.*)$/m;
        if (!$partition && ($partname // '') eq $LABEL && part_type($name, $dev) eq $PART_TYPE) {
            $partition = $dev;
        }
        $volume //= $dev if $label eq $LABEL;
    }
    return $partition // $volume;
}

# Copy site.toml off the volume: mounted read-only, nosuid, nodev, noexec in a private
# directory, unmounted right after. Returns the copy's path, or undef when the volume has none.
sub read_volume {
    my ($dev, $dir) = @_;
    my $mnt = "$dir/mnt";
    mkdir $mnt, 0700 or die "kiln-site: mkdir $mnt: $!\n";
    system('mount', '-t', 'vfat', '-o', 'ro,nosuid,nodev,noexec,uid=0,gid=0,fmask=0177,dmask=0077', '--', $dev, $mnt) == 0
        or die "kiln-site: cannot mount $dev\n";
    my $copy = "$dir/$FILE";
    my $exists = -e "$mnt/$FILE" || -l "$mnt/$FILE";
    my $ok = -f "$mnt/$FILE" && !-l "$mnt/$FILE" && -s "$mnt/$FILE" <= 1024 * 1024;
    if ($ok) {
        open my $in, '<:raw', "$mnt/$FILE" or die "kiln-site: reading $FILE: $!\n";
        open my $out, '>:raw', $copy or die "kiln-site: $copy: $!\n";
        print {$out} do { local $/; <$in> };
        close $out;
        close $in;
    }
    system('umount', '--', $mnt) == 0 or warn "kiln-site: cannot unmount $mnt\n";
    return $exists ? $copy : undef;
}

# Write a file by rename (temp file in the same directory); unchanged contents are left alone.
sub put_file {
    my ($path, $content, $mode, $uid, $gid) = @_;
    if (open my $old, '<:raw', $path) {
        my $was = do { local $/; <$old> };
        close $old;
        my @st = stat $path;
        return if defined $was && $was eq $content && ($st[2] & 07777) == $mode
            && (!defined $uid || ($st[4] == $uid && $st[5] == $gid));
    }
    my $tmp = "$path.kiln-site.$$";
    open my $fh, '>:raw', $tmp or die "kiln-site: writing $path: $!\n";
    print {$fh} $content or die "kiln-site: writing $path: $!\n";
    close $fh or die "kiln-site: writing $path: $!\n";
    chmod $mode, $tmp;
    chown $uid, $gid, $tmp if defined $uid;
    rename $tmp, $path or die "kiln-site: renaming $tmp: $!\n";
}

# A fresh directory only root can enter (what was left of an earlier run is removed first).
sub private_dir {
    my ($dir) = @_;
    mkdirs($RUN, 0755);
    system('umount', '-q', '--', "$dir/mnt") if -d "$dir/mnt";
    unlink "$dir/$FILE";
    rmdir "$dir/mnt";
    rmdir $dir;
    mkdir $dir, 0700 or die "kiln-site: mkdir $dir: $!\n";
}

sub mkdirs {
    my ($path, $mode) = @_;
    my $at = '';
    for my $part (grep { $_ ne '' } split m{/}, $path) {
        $at .= "/$part";
        mkdir $at, $mode unless -d $at;
    }
}

sub run_cmd {
    my @cmd = @_;
    system(@cmd) == 0 or die 'kiln-site: `' . join(' ', @cmd) . "` failed\n";
}

sub apply_hostname {
    my ($name) = @_;
    put_file('/etc/hostname', "$name\n", 0644);
    my ($short) = split /\./, $name;
    my $alias = $short eq $name ? $name : "$name $short";
    if (open my $fh, '<', '/etc/hosts') {
        my $hosts = do { local $/; <$fh> };
        close $fh;
        $hosts =~ s/^127\.0\.1\.1\s.*$/127.0.1.1\t$alias/m or $hosts = "127.0.1.1\t$alias\n$hosts";
        put_file('/etc/hosts', $hosts, 0644);
    }
    # The running system's name (systemd set it from the image's /etc/hostname at start).
    if (open my $k, '>', '/proc/sys/kernel/hostname') {
        print {$k} $name;
        close $k;
    }
}

sub apply_system {
    my ($site) = @_;
    apply_hostname($site->{hostname});
    if (defined $site->{timezone}) {
        my $target = "../usr/share/zoneinfo/$site->{timezone}";
        if ((readlink('/etc/localtime') // '') ne $target) {
            unlink '/etc/localtime.kiln-site';
            symlink $target, '/etc/localtime.kiln-site' or die "kiln-site: /etc/localtime: $!\n";
            rename '/etc/localtime.kiln-site', '/etc/localtime' or die "kiln-site: /etc/localtime: $!\n";
        }
        put_file('/etc/timezone', "$site->{timezone}\n", 0644);
    }
    if (defined $site->{locale}) {
        put_file('/etc/default/locale', "LANG=$site->{locale}\n", 0644);
        put_file('/etc/locale.conf', "LANG=$site->{locale}\n", 0644);
    }
    if (defined $site->{keyboard}) {
        put_file('/etc/default/keyboard',
            "XKBMODEL=\"pc105\"\nXKBLAYOUT=\"$site->{keyboard}\"\nXKBVARIANT=\"\"\nXKBOPTIONS=\"\"\nBACKSPACE=\"guess\"\n", 0644);
        put_file('/etc/vconsole.conf', "KEYMAP=$site->{keyboard}\nXKBLAYOUT=$site->{keyboard}\n", 0644);
    }
}

sub apply_admins {
    my ($admins) = @_;
    my $has_sudo = getgrnam('sudo');
    my @nopasswd;
    for my $a (@$admins) {
        my $name = $a->{name};
        if (!getpwnam $name) {
            my @groups = $has_sudo ? ('--groups', 'sudo') : ();
            run_cmd('useradd', '--create-home', '--user-group', '--shell', '/bin/bash', @groups, '--', $name);
            say_line("kiln-site: added admin $name\n");
        } elsif ($has_sudo) {
            my @members = split ' ', (getgrnam 'sudo')[3];
            run_cmd('usermod', '--append', '--groups', 'sudo', '--', $name) unless grep { $_ eq $name } @members;
        }
        my (undef, undef, $uid, $gid, undef, undef, undef, $home) = getpwnam $name;
        if (defined $a->{hash}) {
            open my $pw, '|-', 'chpasswd', '--encrypted' or die "kiln-site: chpasswd: $!\n";
            print {$pw} "$name:$a->{hash}\n";
            close $pw or die "kiln-site: chpasswd failed for $name\n";
        } else {
            push @nopasswd, $name;
        }
        mkdirs($home, 0755) unless -d $home;
        mkdir "$home/.ssh", 0700 unless -d "$home/.ssh";
        die "kiln-site: $home/.ssh is not a directory\n" if -l "$home/.ssh" || !-d "$home/.ssh";
        chown $uid, $gid, "$home/.ssh";
        chmod 0700, "$home/.ssh";
        my $keys = join '', map {"$_\n"} @{ $a->{keys} };
        my $text = "# Written at every boot by kiln-site.service from the site file.\n$keys";
        put_file("$home/.ssh/authorized_keys", $text, 0600, $uid, $gid);
    }
    apply_sudoers(\@nopasswd) if -d '/etc/sudoers.d';
}

# Key-only admins get passwordless sudo: nobody could type a password they do not have.
sub apply_sudoers {
    my ($names) = @_;
    if (!@$names || !getgrnam('sudo')) {
        unlink $SUDOERS;
        return;
    }
    my $text = "# Written at every boot by kiln-site.service: admins with keys and no password hash.\n"
        . join('', map {"$_ ALL=(ALL:ALL) NOPASSWD: ALL\n"} @$names);
    my $tmp = "$SUDOERS.kiln-site-check";
    put_file($tmp, $text, 0440);
    if (system('visudo', '-cqf', $tmp) != 0) {
        unlink $tmp;
        die "kiln-site: the sudoers drop-in did not pass visudo -c\n";
    }
    rename $tmp, $SUDOERS or die "kiln-site: $SUDOERS: $!\n";
}

sub apply_network {
    my ($nets) = @_;
    mkdirs($NETWORK_DIR, 0755);
    opendir my $dh, $NETWORK_DIR or die "kiln-site: $NETWORK_DIR: $!\n";
    unlink map {"$NETWORK_DIR/$_"} grep {/^10-kiln-site-\d+\.network$/} readdir $dh;
    closedir $dh;
    for my $i (0 .. $#$nets) {
        my $n = $nets->[$i];
        my $u = "# Written by kiln-site.service from the site file's network[$i].\n[Match]\n";
        $u .= defined $n->{match_name} ? "Name=$n->{match_name}\n" : "MACAddress=$n->{match_mac}\n";
        $u .= "\n[Network]\nDHCP=" . ($n->{dhcp} ? 'yes' : 'no') . "\n";
        $u .= join '', map {"Address=$_\n"} @{ $n->{addresses} };
        $u .= "Gateway=$n->{gateway}\n" if defined $n->{gateway};
        $u .= "Gateway=$n->{gateway6}\n" if defined $n->{gateway6};
        $u .= join '', map {"DNS=$_\n"} @{ $n->{dns} };
        $u .= join '', map {"NTP=$_\n"} @{ $n->{ntp} };
        put_file(sprintf('%s/10-kiln-site-%d.network', $NETWORK_DIR, $i), $u, 0644);
    }
}

# Templates: /usr/lib/kiln/site/templates/PATH → /PATH with every {{ site.NAME }} replaced.
sub apply_templates {
    my ($site) = @_;
    return unless -d $TEMPLATES;
    my %value = (hostname => $site->{hostname});
    for my $k (keys %{ $site->{vars} }) {
        my ($kind, $v) = @{ $site->{vars}{$k} };
        $value{$k} = $kind eq 'b' ? ($v ? 'true' : 'false') : $v;
    }
    my @todo = ('');
    while (defined(my $rel = shift @todo)) {
        my $src = "$TEMPLATES$rel";
        if (-d $src && !-l $src) {
            opendir my $dh, $src or die "kiln-site: $src: $!\n";
            push @todo, map {"$rel/$_"} sort grep { $_ ne '.' && $_ ne '..' } readdir $dh;
            closedir $dh;
            next;
        }
        next unless -f $src && !-l $src;
        open my $fh, '<:raw', $src or die "kiln-site: $src: $!\n";
        my $text = do { local $/; <$fh> };
        close $fh;
        my @missing;
        $text =~ s/\{\{\s*site\.([a-z][a-z0-9_]*)\s*\}\}/exists $value{$1} ? $value{$1} : do { push @missing, $1; '' }/ge;
        die "kiln-site: template $rel: no value for " . join(', ', @missing) . "\n" if @missing;
        my ($dir) = $rel =~ m{^(.*)/[^/]+$};
        mkdirs($dir, 0755) if $dir;
        put_file($rel, $text, (stat $src)[2] & 07777);
    }
}

sub apply_site {
    my ($site) = @_;
    apply_system($site) if defined $site->{hostname};
    apply_admins($site->{admins} || []);
    apply_network($site->{network} || []);
    apply_templates($site);
}

# The settings of a box without a (valid) site file: the image's host name and the defaults.
sub image_defaults {
    my ($declared) = @_;
    open my $fh, '<', '/etc/hostname';
    my $name = $fh ? <$fh> : 'localhost';
    chomp $name;
    my %vars;
    for my $k (keys %$declared) {
        my $d = $declared->{$k};
        next unless defined $d->{default};
        my $kind = $d->{type} eq 'integer' ? 'i' : $d->{type} eq 'bool' ? 'b' : 's';
        $vars{$k} = [$kind, $d->{type} eq 'bool' ? ($d->{default} eq 'true' ? 1 : 0) : $d->{default}];
    }
    return { hostname => $name, vars => \%vars };
}

sub write_run_files {
    my ($site) = @_;
    mkdirs($RUN, 0755);
    my $json = site_json($site);
    my $env = site_env($site);
    utf8::encode($json);
    utf8::encode($env);
    put_file("$RUN/site.json", $json, 0644);
    put_file("$RUN/site.env", $env, 0600);
}

# The unit's entry point. Always exits 0 once it could look: an invalid or missing site file
# must not fail the boot, only say why.
sub apply_main {
    my $t0 = uptime();
    my $declared = eval { read_vars($VARS_FILE) } || do { print STDOUT $@; {} };
    my $dev = find_volume();
    my $t1 = uptime();
    my $dir = "$RUN/.volume";
    my $path = $dev ? eval { private_dir($dir); read_volume($dev, $dir) } : undef;
    print STDOUT $@ if $dev && $@;
    if (!$dev) {
        say_line("kiln-site: no site volume (label $LABEL); the image's defaults apply\n");
    } elsif (!defined $path) {
        say_line("kiln-site: $dev holds no $FILE; the image's defaults apply\n");
    }
    my $site;
    if (defined $path) {
        $site = eval { load_site($path, $declared, $ZONEINFO, 1) };
        if (!$site) {
            print STDOUT error_text($@);
            say_line("kiln-site: the site file on $dev is invalid; nothing of it was applied, the image's defaults apply\n");
        }
    }
    my $applied = $site ? eval { apply_site($site); 1 } : 0;
    if ($site && !$applied) {
        print STDOUT $@;
        say_line("kiln-site: applying the site file on $dev failed part way\n");
    }
    if ($site) {
        say_line("kiln-site: applied $FILE from $dev: host name $site->{hostname}, "
            . scalar(@{ $site->{admins} || [] }) . ' admin(s), ' . scalar(@{ $site->{network} || [] }) . " network(s)\n");
    } else {
        apply_network([]);
        eval { apply_templates(image_defaults($declared)); 1 } or print STDOUT $@;
    }
    eval { write_run_files($site || image_defaults($declared)); 1 } or print STDOUT $@;
    unlink "$dir/$FILE";
    rmdir "$dir/mnt";
    rmdir $dir;
    # What this costs the boot, to the console and the journal (docs/site.md).
    say_line(sprintf "kiln-site: done in %.2f s (volume search %.2f s)\n", uptime() - $t0, $t1 - $t0);
    return 0;
}

1;
