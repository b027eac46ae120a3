@echo off
rem cygvm first logon: install Cygwin offline from this ISO, then run
rem bootstrap.sh. Called by the answer file as
rem     X:\cygvm\firstlogon.cmd X: <media-id>
rem Whatever happens it leaves C:\cygvm\status.txt ("ok" or
rem "failed: <step>") and C:\cygvm\install.log, then powers the machine off,
rem so a broken install ends in a clear error instead of a hang.
setlocal EnableExtensions
set "ISO=%~1"
set "WANT_ID=%~2"
set "STATE=C:\cygvm"
set "LOG=%STATE%\install.log"
set "CYGVM_SHUTDOWN=shutdown.exe /s /t 0"
if not exist "%STATE%\" mkdir "%STATE%"
>"%STATE%\status.txt" echo running
>>"%LOG%" echo [%DATE% %TIME%] firstlogon.cmd started from %ISO%

set "STEP=read-config"
if "%ISO%"=="" goto fail
if not exist "%ISO%\cygvm\config.cmd" goto fail
rem Sets CYGVM_MARKER, CYGVM_INSTALLER, CYGVM_SETUP_FLAGS, CYGVM_ROOT,
rem CYGVM_PACKAGES and CYGVM_SHUTDOWN for this image.
call "%ISO%\cygvm\config.cmd"

set "STEP=check-media-id"
if "%WANT_ID%"=="" goto setup
findstr /b /l /c:"%WANT_ID%" "%ISO%\%CYGVM_MARKER%" >nul 2>&1
if errorlevel 1 goto fail

:setup
set "STEP=cygwin-setup"
rem CYGVM_SETUP_FLAGS (from config.cmd) are the flags for this Windows
rem version; the refresh reads them back from setup-flags.txt.
>"%STATE%\setup-flags.txt" echo %CYGVM_SETUP_FLAGS%
>>"%LOG%" echo [%DATE% %TIME%] %CYGVM_INSTALLER% %CYGVM_SETUP_FLAGS% -l %ISO%\mirror -R %CYGVM_ROOT% -P %CYGVM_PACKAGES%
start "" /wait "%ISO%\%CYGVM_INSTALLER%" %CYGVM_SETUP_FLAGS% -l "%ISO%\mirror" -R "%CYGVM_ROOT%" -P %CYGVM_PACKAGES%
set "RC=%ERRORLEVEL%"
>>"%LOG%" echo [%DATE% %TIME%] %CYGVM_INSTALLER% exited with %RC%
rem 118 is setup's IDS_REBOOT_REQUIRED: installed, in-use files are
rem replaced at the next boot. The power-off below is that boot.
if "%RC%"=="118" set "RC=0"
if not "%RC%"=="0" goto fail
set "STEP=cygwin-check"
if not exist "%CYGVM_ROOT%\bin\bash.exe" goto fail

set "STEP=bootstrap"
>>"%LOG%" echo [%DATE% %TIME%] running bootstrap.sh
"%CYGVM_ROOT%\bin\bash.exe" --login "%ISO%\cygvm\bootstrap.sh" "%ISO%"
set "RC=%ERRORLEVEL%"
>>"%LOG%" echo [%DATE% %TIME%] bootstrap.sh exited with %RC%
if not "%RC%"=="0" goto bootstrap_failed
if not exist "%STATE%\bootstrap.done" goto fail
goto poweroff

:bootstrap_failed
rem bootstrap.sh names its own failed step; keep it when it did.
findstr /b /c:"failed:" "%STATE%\status.txt" >nul 2>&1
if errorlevel 1 >"%STATE%\status.txt" echo failed: %STEP%
goto collect

:fail
>>"%LOG%" echo [%DATE% %TIME%] step %STEP% failed
>"%STATE%\status.txt" echo failed: %STEP%

:collect
if defined CYGVM_ROOT if exist "%CYGVM_ROOT%\var\log\setup.log.full" copy /y "%CYGVM_ROOT%\var\log\setup.log.full" "%STATE%\setup.log.full" >nul 2>&1

:poweroff
>>"%LOG%" echo [%DATE% %TIME%] powering off
%CYGVM_SHUTDOWN%
endlocal
